//! The VM's power button: the host asks the guest to shut down by pressing the ACPI power
//! button (QEMU `system_powerdown`, `crosvm stop`). Linux's `button` driver turns the ACPI
//! notification into a KEY_POWER press on an evdev device (/dev/input/eventN, with the
//! `evdev` module); maitred watches those devices and, on a press, powers off the same orderly
//! way as a `Shutdown` request.
//!
//! The event stream comes from the kernel, but it is parsed as untrusted bytes anyway: short
//! reads and partial events are carried over, never indexed past.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Where devtmpfs puts the evdev nodes.
pub const INPUT_DIR: &str = "/dev/input";

/// `struct input_event` on 64-bit Linux: struct timeval (16 bytes), u16 type, u16 code, s32
/// value.
pub const INPUT_EVENT_SIZE: usize = 24;
const EV_KEY: u16 = 0x01;
/// linux/input-event-codes.h
pub const KEY_POWER: u16 = 116;
/// KEY_MAX is 0x2ff: the key bitmap EVIOCGBIT(EV_KEY) fills has this many bytes.
const KEY_BITMAP_LEN: usize = 0x2ff / 8 + 1;

/// Errors finding or watching the power button.
#[derive(Debug, thiserror::Error)]
pub enum PowerButtonError {
    #[error("cannot list input devices in {path}")]
    ListDevices {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no input device in {0} reports KEY_POWER (are the button and evdev modules loaded?)")]
    NoPowerButton(PathBuf),
    #[error("waiting for input events")]
    Poll(#[source] std::io::Error),
    #[error("every power button device failed or went away")]
    AllDevicesGone,
}

/// One input event, the parts of it we look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputEvent {
    pub kind: u16,
    pub code: u16,
    pub value: i32,
}

impl InputEvent {
    fn from_bytes(b: &[u8; INPUT_EVENT_SIZE]) -> Self {
        Self {
            kind: u16::from_ne_bytes([b[16], b[17]]),
            code: u16::from_ne_bytes([b[18], b[19]]),
            value: i32::from_ne_bytes([b[20], b[21], b[22], b[23]]),
        }
    }

    /// A press (not the release, not an autorepeat) of the power key.
    pub fn is_power_press(&self) -> bool {
        self.kind == EV_KEY && self.code == KEY_POWER && self.value == 1
    }
}

/// Splits an evdev byte stream into events, keeping an incomplete tail for the next read.
#[derive(Debug, Default)]
pub struct EventDecoder {
    partial: Vec<u8>,
}

impl EventDecoder {
    /// The whole events `bytes` completes, in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<InputEvent> {
        self.partial.extend_from_slice(bytes);
        let whole = self.partial.len() - self.partial.len() % INPUT_EVENT_SIZE;
        let events = self.partial[..whole]
            .chunks_exact(INPUT_EVENT_SIZE)
            .filter_map(|c| <&[u8; INPUT_EVENT_SIZE]>::try_from(c).ok())
            .map(InputEvent::from_bytes)
            .collect();
        self.partial.drain(..whole);
        events
    }
}

/// An input device that can report the power key.
#[derive(Debug)]
pub struct PowerButton {
    pub path: PathBuf,
    file: File,
    decoder: EventDecoder,
}

impl PowerButton {
    /// Watches `file` (an evdev device, or in tests any readable descriptor) as `path`.
    pub fn new(path: PathBuf, file: File) -> Self {
        Self {
            path,
            file,
            decoder: EventDecoder::default(),
        }
    }
}

/// Whether the evdev device `file` has KEY_POWER in its key bitmap (EVIOCGBIT(EV_KEY)).
fn reports_power_key(file: &File) -> bool {
    let mut bits = [0u8; KEY_BITMAP_LEN];
    // _IOC(_IOC_READ, 'E', 0x20 + EV_KEY, len)
    let request: libc::c_ulong = (2 << 30)
        | ((KEY_BITMAP_LEN as libc::c_ulong) << 16)
        | ((b'E' as libc::c_ulong) << 8)
        | (0x20 + libc::c_ulong::from(EV_KEY));
    // SAFETY: EVIOCGBIT writes at most `len` (encoded in the request) bytes into `bits`.
    let n = unsafe { libc::ioctl(file.as_raw_fd(), request, bits.as_mut_ptr()) };
    let byte = usize::from(KEY_POWER / 8);
    n > 0
        && bits
            .get(byte)
            .is_some_and(|b| b & (1 << (KEY_POWER % 8)) != 0)
}

/// Opens every `event*` device in `dir` that reports KEY_POWER.
pub fn find_power_buttons(dir: &Path) -> Result<Vec<PowerButton>, PowerButtonError> {
    let entries = std::fs::read_dir(dir).map_err(|source| PowerButtonError::ListDevices {
        path: dir.to_owned(),
        source,
    })?;
    let mut found = Vec::new();
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with("event") {
            continue;
        }
        let path = entry.path();
        // std opens with O_CLOEXEC: the services maitred starts do not inherit the device.
        let Ok(file) = File::open(&path) else {
            continue;
        };
        if reports_power_key(&file) {
            found.push(PowerButton::new(path, file));
        }
    }
    if found.is_empty() {
        return Err(PowerButtonError::NoPowerButton(dir.to_owned()));
    }
    Ok(found)
}

/// [`find_power_buttons`], retried for up to `wait`: devtmpfs creates the node of a device
/// that just registered (its module just loaded) a moment later.
pub fn find_power_buttons_within(
    dir: &Path,
    wait: std::time::Duration,
) -> Result<Vec<PowerButton>, PowerButtonError> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        match find_power_buttons(dir) {
            Err(PowerButtonError::NoPowerButton(_) | PowerButtonError::ListDevices { .. })
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// Blocks until one of `buttons` reports a press of the power key; returns that device's
/// path. A device that fails or goes away is dropped from the set.
pub fn wait_for_press(buttons: &mut Vec<PowerButton>) -> Result<PathBuf, PowerButtonError> {
    let mut buf = [0u8; INPUT_EVENT_SIZE * 16];
    loop {
        if buttons.is_empty() {
            return Err(PowerButtonError::AllDevicesGone);
        }
        let mut fds: Vec<libc::pollfd> = buttons
            .iter()
            .map(|b| libc::pollfd {
                fd: b.file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of `fds.len()` pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(PowerButtonError::Poll(e));
        }
        let mut gone = Vec::new();
        for (i, fd) in fds.iter().enumerate() {
            if fd.revents == 0 {
                continue;
            }
            let Some(button) = buttons.get_mut(i) else {
                continue;
            };
            match button.file.read(&mut buf) {
                Ok(0) | Err(_) => gone.push(i),
                Ok(read) => {
                    let bytes = buf.get(..read).unwrap_or_default();
                    if button
                        .decoder
                        .feed(bytes)
                        .iter()
                        .any(InputEvent::is_power_press)
                    {
                        return Ok(button.path.clone());
                    }
                }
            }
        }
        for i in gone.into_iter().rev() {
            buttons.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn event(kind: u16, code: u16, value: i32) -> [u8; INPUT_EVENT_SIZE] {
        let mut b = [0u8; INPUT_EVENT_SIZE];
        b[..8].copy_from_slice(&1_700_000_000u64.to_ne_bytes());
        b[16..18].copy_from_slice(&kind.to_ne_bytes());
        b[18..20].copy_from_slice(&code.to_ne_bytes());
        b[20..24].copy_from_slice(&value.to_ne_bytes());
        b
    }

    /// What the button driver sends for one press: key down, sync, key up, sync.
    fn press() -> Vec<u8> {
        [
            event(EV_KEY, KEY_POWER, 1),
            event(0, 0, 0),
            event(EV_KEY, KEY_POWER, 0),
            event(0, 0, 0),
        ]
        .concat()
    }

    #[test]
    fn decoder_carries_partial_events_across_reads() {
        let mut d = EventDecoder::default();
        let bytes = press();
        // One byte at a time: nothing until an event is whole, then exactly that event.
        let mut events = Vec::new();
        for b in &bytes {
            events.extend(d.feed(std::slice::from_ref(b)));
        }
        assert_eq!(events.len(), 4);
        assert!(events[0].is_power_press());
        assert!(events[1..].iter().all(|e| !e.is_power_press()));
        assert!(d.feed(&[]).is_empty());
        // A split in the middle of an event.
        assert!(d.feed(&bytes[..30]).len() == 1);
        assert_eq!(d.feed(&bytes[30..]).len(), 3);
    }

    #[test]
    fn only_a_power_key_press_counts() {
        for (kind, code, value) in [
            (EV_KEY, KEY_POWER, 0), // release
            (EV_KEY, KEY_POWER, 2), // autorepeat
            (EV_KEY, 115, 1),       // KEY_VOLUMEUP
            (0x04, KEY_POWER, 1),   // EV_MSC with the same code
        ] {
            let e = EventDecoder::default().feed(&event(kind, code, value));
            assert_eq!(e.len(), 1);
            assert!(!e[0].is_power_press(), "{e:?}");
        }
        let e = EventDecoder::default().feed(&event(EV_KEY, KEY_POWER, 1));
        assert!(e[0].is_power_press());
    }

    fn pipe_button(name: &str) -> (PowerButton, std::io::PipeWriter) {
        let (r, w) = std::io::pipe().unwrap();
        let file = File::from(std::os::fd::OwnedFd::from(r));
        (PowerButton::new(PathBuf::from(name), file), w)
    }

    /// Real descriptors (pipes standing in for evdev nodes, which need a kernel input device
    /// this host cannot create): other keys are skipped, a press split across writes is
    /// seen, and the device it came from is named.
    #[test]
    fn wait_for_press_reads_split_events_from_any_device() {
        let (a, mut wa) = pipe_button("event0");
        let (b, mut wb) = pipe_button("event1");
        let mut buttons = vec![a, b];
        let writer = std::thread::spawn(move || {
            wa.write_all(&event(EV_KEY, 115, 1)).unwrap();
            let p = press();
            wb.write_all(&p[..10]).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
            wb.write_all(&p[10..]).unwrap();
            (wa, wb)
        });
        assert_eq!(
            wait_for_press(&mut buttons).unwrap(),
            PathBuf::from("event1")
        );
        drop(writer.join().unwrap());
    }

    #[test]
    fn devices_that_go_away_are_dropped_and_then_reported() {
        let (a, wa) = pipe_button("event0");
        let mut buttons = vec![a];
        drop(wa);
        assert!(matches!(
            wait_for_press(&mut buttons),
            Err(PowerButtonError::AllDevicesGone)
        ));
        assert!(buttons.is_empty());
    }

    #[test]
    fn a_directory_without_power_buttons_is_named() {
        let dir = tempfile::tempdir().unwrap();
        // A regular file named like an event node: the ioctl fails, so it is no button.
        std::fs::write(dir.path().join("event0"), press()).unwrap();
        match find_power_buttons(dir.path()) {
            Err(PowerButtonError::NoPowerButton(p)) => assert_eq!(p, dir.path()),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            find_power_buttons(&dir.path().join("missing")),
            Err(PowerButtonError::ListDevices { .. })
        ));
    }
}
