//! The vhost-user-blk backend driven over a real vhost-user socket by the vhost crate's
//! frontend, the way QEMU drives it: features, protocol features, the configuration space,
//! a shared memfd memory table, one vring with kick and call eventfds. Requests are written
//! into the shared memory by hand, as a guest driver would. (Linux's driver under QEMU is
//! exercised by the end-to-end tests.)

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cros_vmm::devices::virtio::VIRTIO_F_VERSION_1;
use cros_vmm::devices::virtio::block::request::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
};
use cros_vmm::devices::virtio::block::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
};
use cros_vmm::vhost_user::blk::{BlkConfig, serve};
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

#[path = "support/split_queue.rs"]
mod split_queue;
use split_queue::{AVAIL, DESC, F_WRITE, SplitQueue, USED};

const MEM_SIZE: usize = 1 << 20;
const QUEUE_SIZE: u16 = 16;
const HEADER: u64 = 0x10000;
const DATA: u64 = 0x20000;
const STATUS: u64 = 0x30000;
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// A disk image of 8 sectors, sector i filled with byte i.
fn image(dir: &Path) -> PathBuf {
    let path = dir.join("disk.img");
    let bytes: Vec<u8> = (0..8u8).flat_map(|i| [i; 512]).collect();
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A frontend connected to a backend serving `config` on its own thread, with memory and
/// queue 0 set up.
struct Driver {
    frontend: Frontend,
    queue: SplitQueue,
    kick: EventFd,
    call: EventFd,
    features: u64,
    server:
        Option<std::thread::JoinHandle<Result<(), cros_vmm::vhost_user::blk::VhostUserBlkError>>>,
}

impl Driver {
    fn start(dir: &Path, config: BlkConfig) -> Driver {
        let socket = dir.join("blk.sock");
        let (tx, rx) = mpsc::channel();
        let server = {
            let socket = socket.clone();
            std::thread::spawn(move || serve(&socket, &config, move || tx.send(()).unwrap(), None))
        };
        rx.recv().expect("the backend never listened");
        let mut frontend = Frontend::connect(&socket, 1).unwrap();
        frontend.set_owner().unwrap();
        let features = frontend.get_features().unwrap();
        // Polling the used ring is simpler without EVENT_IDX.
        frontend
            .set_features(features & !VIRTIO_RING_F_EVENT_IDX)
            .unwrap();
        let protocol = frontend.get_protocol_features().unwrap();
        assert!(protocol.contains(VhostUserProtocolFeatures::CONFIG));
        frontend
            .set_protocol_features(VhostUserProtocolFeatures::CONFIG)
            .unwrap();

        // Guest memory in a memfd the backend maps, as QEMU's memory-backend-memfd.
        // SAFETY: memfd_create with a valid C string; the fd is owned by `file` at once.
        let fd = unsafe { libc::memfd_create(c"guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        file.set_len(MEM_SIZE as u64).unwrap();
        let mem = GuestMemoryMmap::from_ranges_with_files([(
            GuestAddress(0),
            MEM_SIZE,
            Some(FileOffset::new(file, 0)),
        )])
        .unwrap();
        let region = mem.iter().next().unwrap();
        let host = region.get_host_address(MemoryRegionAddress(0)).unwrap() as u64;
        frontend
            .set_mem_table(&[VhostUserMemoryRegionInfo::from_guest_region(region).unwrap()])
            .unwrap();

        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let call = EventFd::new(EFD_NONBLOCK).unwrap();
        frontend.set_vring_num(0, QUEUE_SIZE).unwrap();
        // Ring addresses are the frontend's own virtual addresses, as in QEMU.
        frontend
            .set_vring_addr(
                0,
                &VringConfigData {
                    queue_max_size: QUEUE_SIZE,
                    queue_size: QUEUE_SIZE,
                    flags: 0,
                    desc_table_addr: host + DESC,
                    used_ring_addr: host + USED,
                    avail_ring_addr: host + AVAIL,
                    log_addr: None,
                },
            )
            .unwrap();
        frontend.set_vring_base(0, 0).unwrap();
        frontend.set_vring_call(0, &call).unwrap();
        frontend.set_vring_kick(0, &kick).unwrap();
        frontend.set_vring_enable(0, true).unwrap();
        Driver {
            frontend,
            queue: SplitQueue::new(mem, QUEUE_SIZE),
            kick,
            call,
            features,
            server: Some(server),
        }
    }

    fn config(&mut self) -> Vec<u8> {
        let (_, payload) = self
            .frontend
            .get_config(0, 60, VhostUserConfigFlags::empty(), &[0u8; 60])
            .unwrap();
        payload.to_vec()
    }

    /// Writes the chain (addr, len, flags) at descriptor 0.., kicks, waits for the call and
    /// returns the used length.
    fn submit(&mut self, descs: &[(u64, u32, u16)]) -> u32 {
        let slot = self.queue.add_chain(0, descs);
        self.queue.publish();
        self.kick.write(1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.call.read().is_err() {
            assert!(Instant::now() < deadline, "no used-buffer notification");
            std::thread::sleep(Duration::from_millis(1));
        }
        let returned = self.queue.used_idx() == self.queue.avail_idx();
        assert!(returned, "request was not returned");
        self.queue.used_len(slot)
    }

    fn header(&self, kind: u32, sector: u64) {
        self.queue
            .mem
            .write_obj(kind, GuestAddress(HEADER))
            .unwrap();
        self.queue
            .mem
            .write_obj(0u32, GuestAddress(HEADER + 4))
            .unwrap();
        self.queue
            .mem
            .write_obj(sector, GuestAddress(HEADER + 8))
            .unwrap();
    }

    fn status(&self) -> u8 {
        self.queue.mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    /// Disconnects, as QEMU exiting does, and waits for the backend to return.
    fn disconnect(mut self) {
        let server = self.server.take().unwrap();
        drop(self);
        server
            .join()
            .unwrap()
            .expect("a frontend disconnect is a clean exit");
    }
}

/// A backend on a fresh 8-sector image in `dir`, and a frontend connected to it.
fn start_on_image(dir: &Path, read_only: bool, serial: Option<&str>) -> (PathBuf, Driver) {
    let path = image(dir);
    let config = BlkConfig {
        path: path.clone(),
        read_only,
        serial: serial.map(Into::into),
    };
    (path, Driver::start(dir, config))
}

const HDR: (u64, u32, u16) = (HEADER, 16, 0);
const ST: (u64, u32, u16) = (STATUS, 1, F_WRITE);

#[test]
fn frontend_reads_writes_flushes_and_gets_the_serial() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut d) = start_on_image(dir.path(), false, Some("crosd-test"));
    assert_ne!(d.features & VIRTIO_F_VERSION_1, 0);
    assert_ne!(d.features & VIRTIO_BLK_F_FLUSH, 0);
    assert_eq!(d.features & VIRTIO_BLK_F_RO, 0);
    let config = d.config();
    assert_eq!(
        u64::from_le_bytes(config[..8].try_into().unwrap()),
        8,
        "capacity in sectors"
    );
    assert_eq!(
        u32::from_le_bytes(config[12..16].try_into().unwrap()),
        126,
        "seg_max"
    );
    assert_ne!(d.features & VIRTIO_BLK_F_BLK_SIZE, 0);
    assert_eq!(
        u32::from_le_bytes(config[20..24].try_into().unwrap()),
        512,
        "blk_size"
    );

    d.header(VIRTIO_BLK_T_IN, 3);
    let used = d.submit(&[HDR, (DATA, 1024, F_WRITE), ST]);
    assert_eq!((d.status(), used), (VIRTIO_BLK_S_OK, 1025));
    let mut buf = [0u8; 1024];
    d.queue
        .mem
        .read_slice(&mut buf, GuestAddress(DATA))
        .unwrap();
    assert!(buf[..512].iter().all(|&b| b == 3) && buf[512..].iter().all(|&b| b == 4));

    d.queue
        .mem
        .write_slice(&[0xab; 512], GuestAddress(DATA))
        .unwrap();
    d.header(VIRTIO_BLK_T_OUT, 6);
    let used = d.submit(&[HDR, (DATA, 512, 0), ST]);
    assert_eq!((d.status(), used), (VIRTIO_BLK_S_OK, 1));
    d.header(VIRTIO_BLK_T_FLUSH, 0);
    d.submit(&[HDR, ST]);
    assert_eq!(d.status(), VIRTIO_BLK_S_OK);
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes[6 * 512..7 * 512].iter().all(|&b| b == 0xab));
    assert!(
        bytes[7 * 512..].iter().all(|&b| b == 7),
        "only sector 6 written"
    );

    d.header(VIRTIO_BLK_T_GET_ID, 0);
    let used = d.submit(&[HDR, (DATA, 20, F_WRITE), ST]);
    assert_eq!((d.status(), used), (VIRTIO_BLK_S_OK, 21));
    let mut id = [0u8; 20];
    d.queue.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..11], b"crosd-test\0");
    d.disconnect();
    assert!(!dir.path().join("blk.sock").exists(), "socket left behind");
}

#[test]
fn read_only_backend_refuses_writes_and_survives_bad_chains() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut d) = start_on_image(dir.path(), true, None);
    assert_ne!(d.features & VIRTIO_BLK_F_RO, 0);
    d.queue
        .mem
        .write_slice(&[0xcd; 512], GuestAddress(DATA))
        .unwrap();
    d.header(VIRTIO_BLK_T_OUT, 0);
    d.submit(&[HDR, (DATA, 512, 0), ST]);
    assert_eq!(d.status(), VIRTIO_BLK_S_IOERR);
    // No status byte: returned unused. A buffer outside guest memory: IOERR. Past the end:
    // IOERR. The backend keeps serving after each.
    assert_eq!(d.submit(&[HDR, (DATA, 512, F_WRITE), (STATUS, 1, 0)]), 0);
    d.header(VIRTIO_BLK_T_IN, 0);
    d.submit(&[HDR, (1 << 40, 512, F_WRITE), ST]);
    assert_eq!(d.status(), VIRTIO_BLK_S_IOERR);
    d.header(VIRTIO_BLK_T_IN, 8);
    d.submit(&[HDR, (DATA, 512, F_WRITE), ST]);
    assert_eq!(d.status(), VIRTIO_BLK_S_IOERR);
    d.header(VIRTIO_BLK_T_IN, 7);
    d.submit(&[HDR, (DATA, 512, F_WRITE), ST]);
    assert_eq!(d.status(), VIRTIO_BLK_S_OK);
    // Without --serial the id is the image's device and inode.
    d.header(VIRTIO_BLK_T_GET_ID, 0);
    d.submit(&[HDR, (DATA, 20, F_WRITE), ST]);
    let meta = std::fs::metadata(&path).unwrap();
    let want = format!("{}:{}", meta.dev(), meta.ino());
    let mut id = vec![0u8; want.len().min(20)];
    d.queue.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(id, &want.as_bytes()[..id.len()]);
    d.disconnect();
    let bytes = std::fs::read(&path).unwrap();
    assert!(
        bytes[..512].iter().all(|&b| b == 0),
        "read-only image changed"
    );
}

#[test]
fn bad_images_and_serials_are_clear_errors_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("blk.sock");
    // (image, read-only, serial, what the error must say)
    let cases = [
        (dir.path().join("missing.img"), false, None, "missing.img"),
        // A directory opens read-only; it is still not an image.
        (
            dir.path().to_path_buf(),
            true,
            None,
            "is not a regular file",
        ),
        (
            image(dir.path()),
            false,
            Some("has space".to_string()),
            "disk serial",
        ),
    ];
    for (path, read_only, serial, needle) in cases {
        let config = BlkConfig {
            path,
            read_only,
            serial,
        };
        let err = serve(&socket, &config, || panic!("must not listen"), None).unwrap_err();
        assert!(err.to_string().contains(needle), "{err}");
        assert!(!socket.exists());
    }
}
