//! Unified kernel image: systemd's EFI stub (`linuxx64.efi.stub` from Debian
//! systemd-boot-efi 252) with `.osrel`, `.cmdline`, `.initrd` and `.linux`
//! sections added by `objcopy`. As ukify does, the new sections are placed
//! after the stub's last section, each at the next 4 KiB aligned VMA, with
//! `.linux` last.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

use crate::tools;

pub const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

#[derive(Debug, Clone)]
pub struct Section {
    pub name: String,
    pub vaddr: u32,
    pub vsize: u32,
    pub raw_ptr: u32,
    pub raw_size: u32,
}

fn u16_at(b: &[u8], o: usize) -> Result<u16> {
    Ok(u16::from_le_bytes(
        b.get(o..o + 2).context("PE truncated")?.try_into()?,
    ))
}
fn u32_at(b: &[u8], o: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(
        b.get(o..o + 4).context("PE truncated")?.try_into()?,
    ))
}
fn u64_at(b: &[u8], o: usize) -> Result<u64> {
    Ok(u64::from_le_bytes(
        b.get(o..o + 8).context("PE truncated")?.try_into()?,
    ))
}

/// (image base, section alignment, sections) of a PE32+ file.
pub fn pe_sections(b: &[u8]) -> Result<(u64, u32, Vec<Section>)> {
    ensure!(b.get(0..2) == Some(b"MZ"), "not a PE file (no MZ)");
    let pe = u32_at(b, 0x3c)? as usize;
    ensure!(
        b.get(pe..pe + 4) == Some(b"PE\0\0"),
        "not a PE file (no PE signature)"
    );
    let coff = pe + 4;
    let nsec = u16_at(b, coff + 2)? as usize;
    let opt_size = u16_at(b, coff + 16)? as usize;
    let opt = coff + 20;
    ensure!(u16_at(b, opt)? == 0x20b, "not a PE32+ image");
    let image_base = u64_at(b, opt + 24)?;
    let align = u32_at(b, opt + 32)?;
    let mut out = Vec::new();
    for i in 0..nsec {
        let s = opt + opt_size + i * 40;
        let raw = b.get(s..s + 8).context("PE section table truncated")?;
        let name = String::from_utf8_lossy(raw)
            .trim_end_matches('\0')
            .to_string();
        out.push(Section {
            name,
            vsize: u32_at(b, s + 8)?,
            vaddr: u32_at(b, s + 12)?,
            raw_size: u32_at(b, s + 16)?,
            raw_ptr: u32_at(b, s + 20)?,
        });
    }
    Ok((image_base, align, out))
}

/// The bytes of section `name` (at most its virtual size).
pub fn section<'a>(b: &'a [u8], name: &str) -> Result<&'a [u8]> {
    let (_, _, secs) = pe_sections(b)?;
    let s = secs
        .iter()
        .find(|s| s.name == name)
        .with_context(|| format!("UKI has no {name} section"))?;
    let len = s.vsize.min(s.raw_size) as usize;
    b.get(s.raw_ptr as usize..s.raw_ptr as usize + len)
        .with_context(|| format!("UKI section {name} out of file bounds"))
}

/// PE image checksum (as in imagehlp's CheckSumMappedFile): 16-bit one's
/// complement style sum of the file with the checksum field skipped, plus the length.
pub fn pe_checksum(b: &[u8], csum_off: usize) -> u32 {
    let mut sum: u64 = 0;
    for (i, c) in b.chunks(2).enumerate() {
        let off = i * 2;
        if off == csum_off || off == csum_off + 2 {
            continue;
        }
        let w = if c.len() == 2 {
            u16::from_le_bytes([c[0], c[1]])
        } else {
            c[0] as u16
        };
        sum += w as u64;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(b.len() as u32)
}

/// objcopy stamps the PE header with the current time; set it to `epoch`
/// and fix the checksum so the UKI is reproducible.
pub fn set_timestamp(b: &mut [u8], epoch: u32) -> Result<()> {
    let pe = u32_at(b, 0x3c)? as usize;
    ensure!(b.get(pe..pe + 4) == Some(b"PE\0\0"), "not a PE file");
    b[pe + 8..pe + 12].copy_from_slice(&epoch.to_le_bytes());
    let csum_off = pe + 24 + 64;
    let c = pe_checksum(b, csum_off);
    b[csum_off..csum_off + 4].copy_from_slice(&c.to_le_bytes());
    Ok(())
}

/// Builds the UKI at `out`. `work` is a scratch directory.
#[allow(clippy::too_many_arguments)]
pub fn build(
    stub: &Path,
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
    osrel: &str,
    epoch: u64,
    work: &Path,
    out: &Path,
) -> Result<()> {
    let stub_bytes = std::fs::read(stub).with_context(|| {
        format!(
            "reading EFI stub {} (Debian package systemd-boot-efi)",
            stub.display()
        )
    })?;
    let (base, _align, secs) = pe_sections(&stub_bytes).context("parsing the EFI stub")?;
    let end = secs
        .iter()
        .map(|s| s.vaddr as u64 + s.vsize as u64)
        .max()
        .context("stub has no sections")?;
    let osrel_p = work.join("osrel");
    let cmd_p = work.join("cmdline");
    std::fs::write(&osrel_p, osrel)?;
    std::fs::write(&cmd_p, cmdline)?;
    let mut vma = base + end;
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    for (name, path) in [
        (".osrel", osrel_p.as_path()),
        (".cmdline", cmd_p.as_path()),
        (".initrd", initrd),
        (".linux", kernel),
    ] {
        let size = std::fs::metadata(path)
            .with_context(|| format!("{}", path.display()))?
            .len();
        vma = vma.div_ceil(4096) * 4096;
        let mut a = std::ffi::OsString::from(format!("--add-section={name}="));
        a.push(path);
        args.push(a);
        args.push(format!("--change-section-vma={name}=0x{vma:x}").into());
        vma += size;
    }
    args.push(stub.into());
    args.push(out.into());
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    tools::run("objcopy", &refs)?;
    let mut built = std::fs::read(out)?;
    set_timestamp(&mut built, epoch as u32)?;
    std::fs::write(out, &built)?;
    let got = section(&built, ".cmdline")?;
    if got != cmdline.as_bytes() {
        bail!("objcopy produced a UKI whose .cmdline does not match");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_sections_parse_and_uki_builds() {
        let stub = Path::new(STUB);
        assert!(
            stub.exists(),
            "{STUB} missing: apt-get install systemd-boot-efi"
        );
        let (_, _, secs) = pe_sections(&std::fs::read(stub).unwrap()).unwrap();
        assert!(secs.iter().any(|s| s.name == ".sdmagic"));
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("k");
        let i = dir.path().join("i");
        std::fs::write(&k, vec![0x4b; 10000]).unwrap();
        std::fs::write(&i, vec![0x49; 5000]).unwrap();
        let out = dir.path().join("uki.efi");
        build(
            stub,
            &k,
            &i,
            "console=ttyS0 gwos.slot=a",
            "NAME=gwos\n",
            1_700_000_000,
            dir.path(),
            &out,
        )
        .unwrap();
        let b = std::fs::read(&out).unwrap();
        assert_eq!(section(&b, ".linux").unwrap(), &vec![0x4b; 10000][..]);
        assert_eq!(section(&b, ".initrd").unwrap(), &vec![0x49; 5000][..]);
        assert_eq!(section(&b, ".osrel").unwrap(), b"NAME=gwos\n");
        let (_, _, s2) = pe_sections(&b).unwrap();
        // sections do not overlap and are in increasing VMA order
        for w in s2.windows(2) {
            assert!(
                w[0].vaddr as u64 + w[0].vsize as u64 <= w[1].vaddr as u64,
                "{s2:?}"
            );
        }
        // reproducible
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let out2 = dir.path().join("uki2.efi");
        build(
            stub,
            &k,
            &i,
            "console=ttyS0 gwos.slot=a",
            "NAME=gwos\n",
            1_700_000_000,
            dir.path(),
            &out2,
        )
        .unwrap();
        assert!(std::fs::read(&out2).unwrap() == b, "UKI not reproducible");
        let o = std::process::Command::new("objdump")
            .arg("-p")
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("Nov 14"),
            "timestamp not set"
        );
    }

    #[test]
    fn checksum_matches_the_stubs() {
        // Our checksum routine agrees with the one in Debian's stub.
        let b = std::fs::read(STUB).unwrap();
        let pe = u32_at(&b, 0x3c).unwrap() as usize;
        let off = pe + 24 + 64;
        assert_eq!(pe_checksum(&b, off), u32_at(&b, off).unwrap());
    }
}
