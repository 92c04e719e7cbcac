//! `gwos`: the host tool. See the library docs (gwos_image) and docs/build.md.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

mod client_cmds;

#[derive(Parser)]
#[command(
    name = "gwos",
    version,
    about = "Build and check gwos disk images; knock, connect and control gateways"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a signed A/B GPT disk image (out/gwos.img, out/gwos.qcow2, report).
    Build {
        /// Image config (default: the embedded default image.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Kernel bzImage.
        #[arg(long)]
        kernel: PathBuf,
        /// Static gwosd binary (PID 1 + services).
        #[arg(long)]
        gwosd: PathBuf,
        #[arg(long, default_value = "out")]
        out: PathBuf,
        /// Cargo workspace to list gwosd's crates from for the SBOM (default: config dir).
        #[arg(long)]
        workspace: Option<PathBuf>,
        /// Skip writing gwos.qcow2.
        #[arg(long)]
        no_qcow2: bool,
        /// Keys directory: its release.key signs; without one, development keys
        /// are made there once (default: <out>/keys).
        #[arg(long)]
        keys: Option<PathBuf>,
        /// Release number (overrides [image] version).
        #[arg(long)]
        version: Option<u64>,
        /// Human version, names the UKI and bundle (overrides [image] version_id).
        #[arg(long)]
        version_id: Option<String>,
        /// Lowest release accepted after this one (overrides [image] security_floor).
        #[arg(long)]
        security_floor: Option<u64>,
        /// Sign a release-named image (version_id without "dev") with development keys.
        #[arg(long)]
        allow_dev_keys: bool,
    },
    /// Check an image: manifest signature, every verity hash of root-a, UKI hash.
    Verify {
        image: PathBuf,
        /// Release public key file(s) (hex).
        #[arg(long)]
        key: Vec<PathBuf>,
        /// Check against the DEVELOPMENT key <image dir>/keys/dev-release.pub.
        #[arg(long)]
        dev: bool,
    },
    /// Show what an update bundle or a disk image holds; checks signatures and part hashes.
    Inspect {
        file: PathBuf,
        /// Release public key file(s) (hex).
        #[arg(long)]
        key: Vec<PathBuf>,
        /// Check against the DEVELOPMENT key <file's dir>/keys/dev-release.pub.
        #[arg(long)]
        dev: bool,
    },
    /// List the files in a slot's root file system.
    Ls {
        image: PathBuf,
        #[arg(default_value = "a")]
        slot: String,
    },
    /// Write a dm-verity hash device (veritysetup format v1 compatible) and print the root hash.
    VerityFormat {
        data: PathBuf,
        hash_out: PathBuf,
        #[arg(long)]
        salt: String,
        #[arg(long, default_value = "00000000-0000-0000-0000-000000000000")]
        uuid: String,
    },
    /// Generate a release key pair: <out> (private, 0600) and <out>.pub.
    Keygen { out: PathBuf },
    /// Send an SPA knock (fwknop wire format) that opens the gateway for this host.
    /// `gwos knock <gateway[:port]> --user U --key-base64 K --hmac-key-base64 H [--access tcp/443] [--allow-ip IP|--source]`
    Knock {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Carry a local WireGuard client's datagrams over TLS 1.3 to a gateway (SPKI-pinned).
    Connect(client_cmds::Connect),
    /// Call a control-channel command through OpenSSH; prints the JSON answer.
    Ctl(client_cmds::Ctl),
    /// Boot an image under QEMU (OVMF, or --direct); --wait-ready/--detach for CI (docs/ci.md).
    Run(gwos_image::run::cli::RunArgs),
    /// Power off a detached `gwos run` (ACPI via the QEMU monitor; killed after --grace).
    Stop(gwos_image::run::cli::StopArgs),
}

fn run() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Build {
            config,
            kernel,
            gwosd,
            out,
            workspace,
            no_qcow2,
            keys,
            version,
            version_id,
            security_floor,
            allow_dev_keys,
        } => {
            let b = gwos_image::build::build(&gwos_image::build::Args {
                config,
                kernel,
                gwosd,
                out,
                workspace,
                qcow2: !no_qcow2,
                keys_dir: keys,
                version,
                version_id,
                security_floor,
                allow_dev_keys,
            })?;
            println!("image      {}", b.image.display());
            println!("sha256     {}", b.image_sha256);
            println!("root hash  {}", b.root_hash);
            println!("build id   {}", b.build_id);
            println!("bundle     {}", b.bundle.display());
            if b.development {
                println!("DEVELOPMENT keys: this image trusts the dev release key and a dev admin control key");
            }
        }
        Cmd::Verify { image, key, dev } => {
            let keys = gwos_image::verify::keys_for(&image, &key, dev)?;
            let m = gwos_image::verify::verify(&image, &keys)?;
            println!("OK: {} verified (version {} / {}, build {}, root hash {}, {} data blocks, UKI sha256 {}){}", image.display(), m.version_id, m.version, m.build_id, m.root_hash, m.data_blocks, m.uki_sha256, if m.development { " DEVELOPMENT image (development keys)" } else { "" });
        }
        Cmd::Inspect { file, key, dev } => {
            let keys = gwos_image::verify::keys_for(&file, &key, dev)?;
            print!("{}", gwos_image::inspect::inspect(&file, &keys)?);
        }
        Cmd::Ls { image, slot } => {
            for (path, kind, mode, size) in gwos_image::verify::ls(&image, &slot)? {
                println!("{kind} {mode:04o} {size:>10} {path}");
            }
        }
        Cmd::VerityFormat {
            data,
            hash_out,
            salt,
            uuid,
        } => {
            let salt = hex::decode(&salt).context("--salt must be hex")?;
            let uuid = uuid::Uuid::parse_str(&uuid).context("--uuid")?;
            let f = std::fs::File::open(&data)
                .with_context(|| format!("opening {}", data.display()))?;
            let len = f.metadata()?.len();
            anyhow::ensure!(
                len % 4096 == 0 && len > 0,
                "data size {len} is not a non-zero multiple of 4096"
            );
            let t = gwos_image::verity::build_file(&f, 0, len / 4096, &salt, uuid.as_bytes())?;
            std::fs::write(&hash_out, &t.hash_area)?;
            println!("Root hash: {}", hex::encode(t.root_hash));
        }
        Cmd::Keygen { out } => {
            let k = gwos_signing::ReleaseKey::generate();
            k.save(&out)?;
            println!(
                "wrote {} (private, 0600) and {} (key id {})",
                out.display(),
                out.with_extension("pub").display(),
                k.public().id_hex()
            );
        }
        Cmd::Knock { args } => client_cmds::knock(&args)?,
        Cmd::Connect(c) => client_cmds::connect(c)?,
        Cmd::Ctl(c) => {
            let code = client_cmds::ctl(c)?;
            if code != 0 {
                std::process::exit(code);
            }
        }
        Cmd::Run(a) => return gwos_image::run::cli::run(a).map(exit_with),
        Cmd::Stop(a) => return gwos_image::run::cli::stop(a).map(exit_with),
    }
    Ok(())
}

/// `gwos run`/`gwos stop` have their own exit codes (docs/ci.md).
fn exit_with(code: u8) {
    if code != 0 {
        std::process::exit(code.into());
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gwos: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
