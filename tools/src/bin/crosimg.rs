//! crosimg: builds and verifies crosd's VM components.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cros_tools::crosimg::{container, install, kernel, rootfs, serve, simplestreams, termina};

#[derive(Parser)]
#[command(
    name = "crosimg",
    about = "Build and verify crosd's VM components (the termina VM image) and container images for LXD."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the termina component: OUT/cros-termina/VERSION/ with vm_kernel, vm_rootfs.img,
    /// vm_tools.img, initramfs.img and manifest.json (SHA-256 of each file).
    BuildTermina {
        /// Guest kernel (a bzImage). Default: Debian's generic linux-image-6.1.*-amd64, fetched with
        /// apt-get download into ~/.cache/crosd/kernel.
        #[arg(long)]
        kernel: Option<PathBuf>,
        /// With --kernel: a flat directory of .ko files plus a `load-order` file for the initramfs.
        #[arg(long, requires = "kernel")]
        modules_dir: Option<PathBuf>,
        /// Components directory to build into (crosd reads STATE_DIR/components).
        #[arg(long, default_value = "/var/lib/crosd/components")]
        out: PathBuf,
        /// Component version (the directory name under cros-termina/).
        #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
        version: String,
        /// Directory holding the static guest programs (maitred, vshd, vm_syslog, tremplin when
        /// built). The root filesystem around them is a Debian userland built with mmdebstrap
        /// and cached under ~/.cache/crosd/rootfs (CROSD_CACHE overrides). Default:
        /// target/x86_64-unknown-linux-gnu/<profile>/ beside this program.
        #[arg(long)]
        guest_bin_dir: Option<PathBuf>,
        /// Replace an existing component of the same version.
        #[arg(long)]
        force: bool,
    },
    /// Install a built component into crosd's state directory atomically: it is copied to a
    /// hidden directory, verified, then renamed to STATE_DIR/components/NAME/VERSION.
    Install {
        /// The built component directory (…/cros-termina/VERSION, with manifest.json).
        dir: PathBuf,
        /// crosd's state directory.
        #[arg(long, default_value = "/var/lib/crosd")]
        state_dir: PathBuf,
        /// Replace an installed component of the same version.
        #[arg(long)]
        force: bool,
    },
    /// Verify a component directory against its manifest.json: every file's size and SHA-256.
    Verify {
        /// The component directory (…/cros-termina/VERSION).
        dir: PathBuf,
    },
    /// Build a container image in LXD's split format (lxd.tar.xz + rootfs) and add it to the
    /// simplestreams tree OUT (images/<os>/<release>/amd64/<variant>/<serial>/, with
    /// streams/v1/index.json and images.json); the tree's other products stay.
    BuildContainer {
        /// busybox: a seconds-to-build test image; debian: systemd + garcon, like Crostini's.
        kind: container::Kind,
        /// The simplestreams tree (made if missing). Required.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Debian release (debian only).
        #[arg(long, default_value = "bookworm")]
        release: String,
        /// How the root filesystem is packed.
        #[arg(long, value_enum, default_value = "squashfs")]
        rootfs_format: simplestreams::RootfsFormat,
        /// Version name (default: the build time, YYYYMMDD_HHMM UTC).
        #[arg(long)]
        serial: Option<String>,
        /// Versions of this product kept in the tree, the new one included.
        #[arg(long, default_value_t = 2)]
        keep: usize,
        /// Static busybox for the busybox image.
        #[arg(long, default_value = "/bin/busybox")]
        busybox: PathBuf,
        /// Debian archive for the debian image (mmdebstrap's tree is cached per release,
        /// mirror and package list under ~/.cache/crosd or CROSD_CACHE).
        #[arg(long, default_value = rootfs::DEFAULT_MIRROR)]
        mirror: String,
    },
    /// Serve a simplestreams tree over HTTP (GET and HEAD). Prints `serving http://ADDR/` on
    /// stdout first (with the real port when PORT is 0), then one line per request on stderr.
    Serve {
        /// The tree (must hold streams/v1/index.json).
        dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = serve::DEFAULT_LISTEN)]
        listen: String,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crosimg: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::BuildTermina {
            kernel: kernel_path,
            modules_dir,
            out,
            version,
            guest_bin_dir,
            force,
        } => {
            let kernel = match kernel_path {
                Some(k) => kernel::given_kernel(&k, modules_dir.as_deref())?,
                None => {
                    eprintln!(
                        "crosimg: fetching Debian's guest kernel (cached under ~/.cache/crosd)"
                    );
                    kernel::fetch_debian_kernel(
                        kernel::TERMINA_EARLY_MODULES,
                        kernel::TERMINA_LATE_MODULES,
                        kernel::TERMINA_LXD_MODULES,
                    )?
                }
            };
            let guest_bin_dir = guest_bin_dir.or_else(termina::default_guest_bin_dir).ok_or_else(|| {
                anyhow::anyhow!("no static guest programs found: build them with RUSTFLAGS='-C target-feature=+crt-static' cargo build -p cros-guest --bins --target x86_64-unknown-linux-gnu, or pass --guest-bin-dir")
            })?;
            let dir = termina::build(&termina::BuildOptions {
                out,
                version,
                kernel,
                guest_bin_dir,
                force,
            })?;
            println!("{}", dir.display());
            Ok(())
        }
        Cmd::Install {
            dir,
            state_dir,
            force,
        } => {
            let dest = install::install(&dir, &state_dir.join("components"), force)?;
            println!("{}", dest.display());
            Ok(())
        }
        Cmd::Verify { dir } => {
            let m = cros_actors::imageloader::manifest::verify_component(&dir)?;
            println!(
                "{} {} (kernel {}): {} files verified",
                m.name,
                m.version,
                m.kernel_release,
                m.files.len()
            );
            Ok(())
        }
        Cmd::BuildContainer {
            kind,
            out,
            release,
            rootfs_format,
            serial,
            keep,
            busybox,
            mirror,
        } => {
            // Checked here rather than by clap, whose message for it spans two lines.
            let out = out.ok_or_else(|| {
                anyhow::anyhow!("--out DIR is required: the simplestreams tree to add the image to")
            })?;
            let image = container::build(&container::BuildOptions {
                kind,
                out,
                release,
                rootfs_format,
                serial,
                keep,
                busybox,
                mirror,
            })?;
            eprintln!(
                "crosimg: {} {} (fingerprint {}, {} + {} bytes), aliases {}",
                image.product,
                image.serial,
                image.fingerprint,
                image.metadata_size,
                image.rootfs_size,
                image.aliases.join(",")
            );
            println!("{}", image.dir.display());
            Ok(())
        }
        Cmd::Serve { dir, listen } => serve::Server::bind(&dir, &listen)?.run_forever(),
    }
}
