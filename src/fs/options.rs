//! `-o` options, as mount(8) and fstab hand them to `commitfs DATA_DIR MOUNTPOINT -o OPTIONS`
//! (through mount.fuse3). FUSE and mount options keep the meaning they have for any FUSE file
//! system; options meant for mount(8), fstab or systemd are accepted and ignored; anything else
//! is refused, so a typo does not mount with a setting silently missing.

use std::path::PathBuf;

/// Mount flags the kernel applies; commitfs's defaults are `rw,nosuid,nodev,noatime`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MountFlags {
    pub read_only: bool,
    pub suid: bool,
    pub dev: bool,
    pub no_exec: bool,
    pub atime: bool,
}

/// What the `-o` options asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountOptions {
    /// `config=FILE`.
    pub config: Option<PathBuf>,
    /// `allow_other`: let other users in, whatever the config says.
    pub allow_other: bool,
    /// `over_mount`: mount on a directory that is already a mount point, hiding that mount
    /// until this one is unmounted (refused unless asked, as a mistake is likelier).
    pub over_mount: bool,
    pub flags: MountFlags,
}

/// Read by mount(8), fstab or systemd, never by the file system.
const FSTAB_ONLY: &[&str] = &[
    "defaults", "auto", "noauto", "nofail", "_netdev", "user", "users", "nouser", "owner", "group",
];

/// Parses the `-o` arguments, each a comma-separated list.
pub fn parse(lists: &[String]) -> Result<MountOptions, String> {
    let mut options = MountOptions::default();
    for option in lists.iter().flat_map(|list| list.split(',')) {
        apply(&mut options, option)?;
    }
    Ok(options)
}

fn apply(options: &mut MountOptions, option: &str) -> Result<(), String> {
    let flags = &mut options.flags;
    match option.split_once('=') {
        Some(("config", "")) => return Err("`config=` needs a file name".to_owned()),
        Some(("config", file)) => options.config = Some(PathBuf::from(file)),
        // systemd's own options and comments in fstab (x-systemd.*, comment=…).
        Some(("comment", _)) => {}
        _ if option.starts_with("x-") => {}
        Some(_) => return Err(unknown(option)),
        None => match option {
            "" | "rw" | "default_permissions" => {}
            "allow_other" => options.allow_other = true,
            "over_mount" => options.over_mount = true,
            "ro" => flags.read_only = true,
            "suid" => flags.suid = true,
            "nosuid" => flags.suid = false,
            "dev" => flags.dev = true,
            "nodev" => flags.dev = false,
            "exec" => flags.no_exec = false,
            "noexec" => flags.no_exec = true,
            "atime" | "relatime" => flags.atime = true,
            "noatime" => flags.atime = false,
            _ if FSTAB_ONLY.contains(&option) => {}
            _ => return Err(unknown(option)),
        },
    }
    Ok(())
}

fn unknown(option: &str) -> String {
    format!(
        "unknown mount option `{option}` (commitfs takes config=FILE, allow_other, over_mount, \
         ro, rw, default_permissions, [no]suid, [no]dev, [no]exec, [no]atime, relatime, and ignores \
         fstab's {} and x-*)",
        FSTAB_ONLY.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_one(list: &str) -> Result<MountOptions, String> {
        parse(&[list.to_owned()])
    }

    #[test]
    fn what_mount_fuse3_passes_for_an_fstab_line_is_understood() {
        // mount(8) adds `rw`, mount.fuse3 adds `dev,suid` when root mounts.
        let options =
            parse_one("rw,config=/etc/commitfs/a.toml,allow_other,noatime,dev,suid").unwrap();
        assert_eq!(options.config, Some(PathBuf::from("/etc/commitfs/a.toml")));
        assert!(options.allow_other);
        assert!(!options.over_mount);
        assert!(parse_one("over_mount").unwrap().over_mount);
        assert_eq!(
            options.flags,
            MountFlags {
                suid: true,
                dev: true,
                ..MountFlags::default()
            }
        );
    }

    #[test]
    fn fstab_and_systemd_options_are_ignored() {
        let options = parse_one(
            "defaults,nofail,noauto,_netdev,x-systemd.automount,x-systemd.requires=a.mount,comment=x",
        )
        .unwrap();
        assert_eq!(options, MountOptions::default());
    }

    #[test]
    fn ro_and_noexec_reach_the_kernel_flags() {
        let options = parse(&["ro".to_owned(), "noexec,nosuid".to_owned()]).unwrap();
        assert_eq!(
            options.flags,
            MountFlags {
                read_only: true,
                no_exec: true,
                ..MountFlags::default()
            }
        );
    }

    #[test]
    fn unknown_options_are_refused_by_name() {
        let error = parse_one("config=/a.toml,alow_other").unwrap_err();
        assert!(error.contains("`alow_other`"), "{error}");
        let error = parse_one("uid=5").unwrap_err();
        assert!(error.contains("`uid=5`"), "{error}");
        assert!(parse_one("config=").is_err());
    }
}
