pub mod guest_driver;
