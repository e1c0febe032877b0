//! Who is at the other end of the socket, and what they may do. The peer's uid and gid come from
//! `SO_PEERCRED`; its supplementary groups from the group database (`getpwuid_r` then
//! `getgrouplist`), not from `/proc/<pid>/status`, which the unit's `ProtectProc=invisible`
//! hides. Two roles: read (status, events, results) for root, the daemon's user and members of
//! its group or `socket_group`; control (pause, resume, retry) for root, the daemon's user and
//! members of `control_group` only.

use std::os::fd::AsRawFd;

/// What a peer may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    None,
    Read,
    Control,
}

/// Looks up a group id by name.
pub fn group_id(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: getgrnam_r writes into grp/buf, which we own and size correctly.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16384];
    let mut out: *mut libc::group = std::ptr::null_mut();
    let rc = unsafe { libc::getgrnam_r(c.as_ptr(), &mut grp, buf.as_mut_ptr(), buf.len(), &mut out) };
    (rc == 0 && !out.is_null()).then_some(grp.gr_gid)
}

/// (uid, gid) of the process at the other end.
pub fn peer_credentials(stream: &impl AsRawFd) -> std::io::Result<(u32, u32)> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED fills a ucred we own; len holds its size.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((cred.uid, cred.gid))
}

/// Every group of a user (primary and supplementary) from the group database; just `gid` when
/// the uid has no passwd entry.
pub fn user_groups(uid: u32, gid: u32) -> Vec<u32> {
    // SAFETY: getpwuid_r writes into pwd/buf, which we own and size correctly.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16384];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        return vec![gid];
    }
    let mut n: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::gid_t; n as usize];
        let before = n;
        // SAFETY: pw_name points into buf (alive); groups holds n entries, updated by the call.
        let rc = unsafe { libc::getgrouplist(pwd.pw_name, gid, groups.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            groups.truncate(n.max(0) as usize);
            if !groups.contains(&gid) {
                groups.push(gid);
            }
            return groups;
        }
        if n <= before {
            n = before * 2; // some libcs do not report the size needed
        }
        if n > 65536 {
            return vec![gid];
        }
    }
}

/// Who may connect and who may control.
#[derive(Debug, Clone)]
pub struct PeerPolicy {
    /// The daemon's own user.
    pub uid: u32,
    /// Groups whose members may read: the daemon's group and `socket_group`.
    pub read_gids: Vec<u32>,
    /// `control_group`, whose members may also pause, resume and retry.
    pub control_gid: Option<u32>,
}

impl PeerPolicy {
    /// The role of a peer with this uid and these groups (primary included).
    pub fn role(&self, uid: u32, groups: &[u32]) -> Role {
        if uid == 0 || uid == self.uid || self.control_gid.is_some_and(|g| groups.contains(&g)) {
            Role::Control
        } else if groups.iter().any(|g| self.read_gids.contains(g)) {
            Role::Read
        } else {
            Role::None
        }
    }

    /// The role of the process at the other end of `stream` (a std or a tokio socket).
    pub fn role_of(&self, stream: &impl AsRawFd) -> std::io::Result<Role> {
        let (uid, gid) = peer_credentials(stream)?;
        Ok(self.role(uid, &user_groups(uid, gid)))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn roles_follow_groups_and_only_control_members_may_control() {
        let p = PeerPolicy {
            uid: 1000,
            read_gids: vec![50, 60],
            control_gid: Some(70),
        };
        assert_eq!(p.role(0, &[99]), Role::Control, "root");
        assert_eq!(p.role(1000, &[99]), Role::Control, "the daemon's user");
        assert_eq!(p.role(7, &[99, 70]), Role::Control, "a control_group member");
        assert_eq!(
            p.role(7, &[99, 60]),
            Role::Read,
            "a socket_group member cannot control"
        );
        assert_eq!(p.role(7, &[99]), Role::None);
        let no_control = PeerPolicy {
            control_gid: None,
            ..p
        };
        assert_eq!(no_control.role(7, &[50, 70]), Role::Read);
        assert_eq!(group_id("root"), Some(0));
        assert_eq!(group_id("no-such-group-ctmask"), None);
        // root's groups from the database include its primary group
        assert!(user_groups(0, 0).contains(&0));
        assert_eq!(user_groups(4_000_000_000, 123), vec![123], "no passwd entry");
    }

    #[test]
    fn the_peer_of_a_socket_pair_is_this_process() {
        let (a, _b) = UnixStream::pair().expect("pair");
        // SAFETY: plain getters.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        assert_eq!(peer_credentials(&a).expect("creds"), (uid, gid));
        let p = PeerPolicy {
            uid,
            read_gids: vec![],
            control_gid: None,
        };
        assert_eq!(p.role_of(&a).expect("role"), Role::Control);
    }
}
