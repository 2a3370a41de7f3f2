//! The kernel mount, made by commitfs itself and handed to fuser as a descriptor
//! (`Session::from_fd`), for two reasons fuser's own mounting does not cover:
//!
//! - A user who cannot open `/dev/fuse` (Debian makes it 0600 on some machines) mounts through
//!   the setuid `fusermount3`, as libfuse does; fuser 0.18 falls back to it only when
//!   `mount(2)` says `EPERM`, not when the device cannot be opened.
//! - The daemon must only ever unmount its own mount. fuser unmounts by path when its session
//!   ends, which after `umount MNT` removes whatever is mounted on MNT by then (a mount that
//!   was beneath it, or a new mount of the same store).

use std::ffi::{CString, OsStr};
use std::fs::OpenOptions;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rustix::mount::{MountFlags, UnmountFlags};

const DEV_FUSE: &str = "/dev/fuse";
const FUSERMOUNT: &str = "fusermount3";
/// The file system type in /proc/mounts: `mount -t fuse.commitfs` and fstab name it so.
const FS_TYPE: &str = "fuse.commitfs";

/// What the kernel is asked for, beyond what commitfs always sets (`default_permissions`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelOptions {
    /// The mount's source in /proc/mounts and `df`.
    pub fsname: String,
    pub allow_other: bool,
    pub read_only: bool,
    /// Off by default (`nosuid`, `nodev`, as fusermount3 always does for other users).
    pub suid: bool,
    pub dev: bool,
    pub no_exec: bool,
    /// Off by default (`noatime`): commitfs keeps no access times.
    pub atime: bool,
}

/// How a mount was made, which decides how it is unmounted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// `mount(2)` on a descriptor of `/dev/fuse` this process opened.
    Direct,
    /// The setuid `fusermount3` mounted and passed the descriptor back.
    Fusermount,
}

/// The mount this daemon made: unmounted only while it is still the one on top of the path.
#[derive(Debug)]
pub struct KernelMount {
    mountpoint: PathBuf,
    /// `major:minor` of the mount, as /proc/self/mountinfo gives it: the FUSE connection.
    device: String,
    pub method: Method,
}

/// Why a direct mount is not possible, so `fusermount3` has to make it.
pub fn needs_fusermount(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM))
}

/// Mounts on `mountpoint`; returns the descriptor to serve and the mount.
pub fn mount(mountpoint: &Path, options: &KernelOptions) -> io::Result<(OwnedFd, KernelMount)> {
    // Tests make the kernel mount fail after the store was opened.
    fail::fail_point!("kernel_mount::mount", |_| Err(io::Error::other(
        "injected failure (failpoint kernel_mount::mount)"
    )));
    let (fd, method) = match mount_direct(mountpoint, options) {
        Ok(fd) => (fd, Method::Direct),
        Err(error) if needs_fusermount(&error) => {
            tracing::info!(
                "mounting through {FUSERMOUNT}: this user cannot mount directly ({error})"
            );
            (
                mount_with_fusermount(mountpoint, options)?,
                Method::Fusermount,
            )
        }
        Err(error) => return Err(error),
    };
    let device = top_mount(mountpoint)?
        .map(|top| top.device)
        .ok_or_else(|| {
            io::Error::other(format!(
                "{} is not in /proc/self/mountinfo after mounting",
                mountpoint.display()
            ))
        })?;
    Ok((
        fd,
        KernelMount {
            mountpoint: mountpoint.to_owned(),
            device,
            method,
        },
    ))
}

fn mount_direct(mountpoint: &Path, options: &KernelOptions) -> io::Result<OwnedFd> {
    let device = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(DEV_FUSE)?;
    let root_mode = std::fs::metadata(mountpoint)?.permissions().mode() & libc::S_IFMT;
    let (uid, gid) = (
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
    );
    let mut data = format!(
        "fd={},rootmode={root_mode:o},user_id={uid},group_id={gid},default_permissions",
        device.as_raw_fd()
    );
    if options.allow_other {
        data.push_str(",allow_other");
    }
    let mut flags = MountFlags::empty();
    for (set, flag) in [
        (options.read_only, MountFlags::RDONLY),
        (!options.suid, MountFlags::NOSUID),
        (!options.dev, MountFlags::NODEV),
        (options.no_exec, MountFlags::NOEXEC),
        (!options.atime, MountFlags::NOATIME),
    ] {
        if set {
            flags |= flag;
        }
    }
    let source = c_string(OsStr::new(&options.fsname))?;
    let target = c_string(mountpoint.as_os_str())?;
    let fs_type = c_string(OsStr::new(FS_TYPE))?;
    let data = c_string(OsStr::new(&data))?;
    rustix::mount::mount(&source, &target, &fs_type, flags, data.as_c_str())?;
    Ok(device.into())
}

/// The options `fusermount3 -o` takes; it adds `nosuid,nodev` itself for other users.
fn fusermount_options(options: &KernelOptions) -> String {
    let mut list = vec![
        if options.read_only { "ro" } else { "rw" }.to_owned(),
        "default_permissions".to_owned(),
        format!("fsname={}", options.fsname),
        "subtype=commitfs".to_owned(),
    ];
    for (set, name) in [
        (options.allow_other, "allow_other"),
        (!options.suid, "nosuid"),
        (!options.dev, "nodev"),
        (options.no_exec, "noexec"),
        (!options.atime, "noatime"),
    ] {
        if set {
            list.push(name.to_owned());
        }
    }
    list.join(",")
}

/// libfuse's protocol: fusermount3 mounts, then sends the `/dev/fuse` descriptor back over
/// the socket named by `_FUSE_COMMFD`, and exits.
fn mount_with_fusermount(mountpoint: &Path, options: &KernelOptions) -> io::Result<OwnedFd> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let their_fd = theirs.as_raw_fd();
    let mut command = Command::new(FUSERMOUNT);
    command
        .arg("-o")
        .arg(fusermount_options(options))
        .arg("--")
        .arg(mountpoint)
        .env("_FUSE_COMMFD", their_fd.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: the closure only calls fcntl, which is async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            if libc::fcntl(their_fd, libc::F_SETFD, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("running {FUSERMOUNT} (Debian package fuse3): {error}"),
        )
    })?;
    drop(theirs);
    let received = receive_fd(&ours);
    drop(ours);
    let output = child.wait_with_output()?;
    match received {
        Ok(fd) => Ok(fd),
        Err(_) => {
            let said = String::from_utf8_lossy(&output.stderr).trim().to_owned();
            let hint = if said.contains("failed to open /dev/fuse") {
                " (/dev/fuse is closed to this user, so no FUSE file system can be mounted by \
                 it: Debian's default is mode 0666; or mount as root)"
            } else {
                ""
            };
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{FUSERMOUNT} refused the mount ({}): {said}{hint}",
                    output.status
                ),
            ))
        }
    }
}

fn receive_fd(socket: &std::os::unix::net::UnixStream) -> io::Result<OwnedFd> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut byte = [0u8; 1];
    // Room for one control message carrying one descriptor; any others sent are closed.
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = loop {
        match rustix::net::recvmsg(
            socket,
            &mut [io::IoSliceMut::new(&mut byte)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Err(rustix::io::Errno::INTR) => {}
            received => break received?,
        }
    };
    let no_descriptor = || io::Error::other("no descriptor came back");
    if received.bytes == 0 {
        return Err(no_descriptor());
    }
    let fd = match control.drain().next() {
        Some(RecvAncillaryMessage::ScmRights(mut fds)) => fds.next(),
        _ => None,
    };
    fd.ok_or_else(no_descriptor)
}

/// What /proc/self/mountinfo says about the topmost mount on a path.
#[derive(Debug, PartialEq, Eq)]
pub struct MountEntry {
    pub device: String,
    pub fs_type: String,
}

/// The topmost mount on `path` (mounted later means listed later), if any.
pub fn top_mount(path: &Path) -> io::Result<Option<MountEntry>> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(find_top_mount(&table, path))
}

fn find_top_mount(table: &str, path: &Path) -> Option<MountEntry> {
    table.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let mount_point = unescape(fields.get(4)?);
        if Path::new(OsStr::from_bytes(&mount_point)) != path {
            return None;
        }
        // The optional fields end at "-"; the type follows it.
        let separator = fields.iter().position(|field| *field == "-")?;
        Some(MountEntry {
            device: fields.get(2)?.to_string(),
            fs_type: fields.get(separator + 1)?.to_string(),
        })
    })
}

/// mountinfo writes space, tab, newline and backslash in paths as `\ooo`.
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let octal = bytes.get(at + 1..at + 4).filter(|digits| {
            bytes[at] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d))
        });
        match octal {
            Some(digits) => {
                out.push(
                    digits
                        .iter()
                        .fold(0u8, |n, d| n.wrapping_mul(8) + (d - b'0')),
                );
                at += 4;
            }
            None => {
                out.push(bytes[at]);
                at += 1;
            }
        }
    }
    out
}

/// Why the daemon did not unmount.
#[derive(Debug, thiserror::Error)]
pub enum UnmountError {
    #[error("{0} is no longer this daemon's mount (something else is mounted there now); leaving it alone")]
    NotOurs(PathBuf),
    #[error("{0}")]
    Failed(io::Error),
}

impl KernelMount {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// `major:minor`, as /proc/self/mountinfo and /sys/class/bdi name the mount.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Whether the mount on top of the path is still this one.
    pub fn is_on_top(&self) -> bool {
        top_mount(&self.mountpoint)
            .ok()
            .flatten()
            .is_some_and(|top| top.device == self.device)
    }

    /// Unmounts, if the mount on the path is still ours; `lazy` detaches it even while files
    /// are open (the daemon then serves them until the last one closes).
    pub fn unmount(&self, lazy: bool) -> Result<(), UnmountError> {
        if !self.is_on_top() {
            return Err(UnmountError::NotOurs(self.mountpoint.clone()));
        }
        match self.method {
            Method::Direct => {
                let path = c_string(self.mountpoint.as_os_str()).map_err(UnmountError::Failed)?;
                let flags = if lazy {
                    UnmountFlags::DETACH
                } else {
                    UnmountFlags::empty()
                };
                rustix::mount::unmount(&path, flags)
                    .map_err(|errno| UnmountError::Failed(errno.into()))
            }
            Method::Fusermount => {
                let mut command = Command::new(FUSERMOUNT);
                command.arg("-u").arg("-q");
                if lazy {
                    command.arg("-z");
                }
                let output = command
                    .arg("--")
                    .arg(&self.mountpoint)
                    .stdin(Stdio::null())
                    .output()
                    .map_err(UnmountError::Failed)?;
                if output.status.success() {
                    return Ok(());
                }
                let said = String::from_utf8_lossy(&output.stderr);
                // fusermount3 -u reports a busy mount in words, not as an errno.
                let error = if said.contains("busy") {
                    io::Error::from_raw_os_error(libc::EBUSY)
                } else {
                    io::Error::other(format!("{FUSERMOUNT} -u: {}", said.trim()))
                };
                Err(UnmountError::Failed(error))
            }
        }
    }
}

fn c_string(text: &OsStr) -> io::Result<CString> {
    CString::new(text.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} holds a NUL byte", text.to_string_lossy()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:45 / /srv/my\\040logs rw,nosuid,nodev - fuse.commitfs /data rw,user_id=0,group_id=0
41 40 0:46 / /srv/my\\040logs rw,nosuid,nodev shared:7 - tmpfs tmpfs rw
";

    #[test]
    fn the_topmost_mount_on_a_path_is_the_one_listed_last() {
        let top = find_top_mount(TABLE, Path::new("/srv/my logs")).expect("mounted");
        assert_eq!(
            top,
            MountEntry {
                device: "0:46".into(),
                fs_type: "tmpfs".into()
            }
        );
        assert_eq!(find_top_mount(TABLE, Path::new("/srv")), None);
        assert_eq!(
            find_top_mount(TABLE, Path::new("/")).map(|m| m.fs_type),
            Some("ext4".into())
        );
    }

    #[test]
    fn octal_escapes_in_mount_points_are_decoded() {
        assert_eq!(unescape("/a\\040b\\134c\\011"), b"/a b\\c\t");
        assert_eq!(unescape("/plain\\9"), b"/plain\\9");
    }

    #[test]
    fn a_refused_device_or_mount_call_falls_back_to_fusermount() {
        for errno in [libc::EACCES, libc::EPERM] {
            assert!(needs_fusermount(&io::Error::from_raw_os_error(errno)));
        }
        for errno in [libc::ENOENT, libc::ENODEV, libc::EBUSY] {
            assert!(!needs_fusermount(&io::Error::from_raw_os_error(errno)));
        }
    }

    #[test]
    fn fusermount_gets_the_same_options_as_a_direct_mount() {
        let options = KernelOptions {
            fsname: "/data".into(),
            allow_other: true,
            read_only: true,
            ..KernelOptions::default()
        };
        assert_eq!(
            fusermount_options(&options),
            "ro,default_permissions,fsname=/data,subtype=commitfs,allow_other,nosuid,nodev,noatime"
        );
    }
}
