//! Zero-copy forwarding for bulk flows: `splice(2)` from socket to pipe to socket (Linux), the one module with `unsafe`.
//!
//! Each `unsafe` block calls one Linux system call on file descriptors this
//! module owns (the pipe) or borrows for the duration of the call (the
//! sockets, through `AsRawFd` on a live `TcpStream`); no memory is shared
//! with the kernel beyond the arguments, so a failing call only returns an
//! error.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Pipe capacity asked for: one call can then move up to this much.
const PIPE_SIZE: libc::c_int = 1 << 20;
/// Free pipes kept per worker thread.
const POOL_KEEP: usize = 32;

thread_local! {
    static FREE: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// A non-blocking pipe used as the kernel-side buffer of one direction.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    /// Takes a pipe from this thread's free list, or creates one.
    pub fn take() -> io::Result<Pipe> {
        if let Some(p) = FREE.with(|f| f.borrow_mut().pop()) {
            return Ok(p);
        }
        Pipe::new()
    }

    /// Returns an *empty* pipe to this thread's free list (or closes it).
    pub fn give(self) {
        FREE.with(|f| {
            let mut f = f.borrow_mut();
            if f.len() < POOL_KEEP {
                f.push(self);
            }
        });
    }

    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a valid, writable array of two ints, as pipe2 requires.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A bigger pipe moves more per call; if the system refuses, the default (64 KiB) works too.
        // SAFETY: F_SETPIPE_SZ on a pipe descriptor we own; no pointers involved.
        let size = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
        let capacity = if size > 0 { size as usize } else { 64 * 1024 };
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Moves up to `len` bytes from socket `from` into the pipe. 0 means end of stream.
    pub fn fill_from(&self, from: RawFd, len: usize) -> io::Result<usize> {
        splice(from, self.write.as_raw_fd(), len)
    }

    /// Moves up to `len` bytes from the pipe into socket `to`.
    pub fn drain_to(&self, to: RawFd, len: usize) -> io::Result<usize> {
        splice(self.read.as_raw_fd(), to, len)
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open for the duration of the call (the
    // caller borrows the socket, this module owns the pipe); null offsets are
    // required for sockets and pipes.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn moves_bytes_socket_to_pipe_to_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        let l2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l2.local_addr().unwrap()).unwrap();
        let (mut d, _) = l2.accept().unwrap();
        a.write_all(b"through the pipe").unwrap();
        let pipe = Pipe::take().unwrap();
        assert!(pipe.capacity() >= 64 * 1024);
        let mut moved = 0;
        while moved < 16 {
            match pipe.fill_from(b.as_raw_fd(), 1 << 16) {
                Ok(n) => moved += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(pipe.drain_to(c.as_raw_fd(), moved).unwrap(), 16);
        let mut got = [0u8; 16];
        d.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"through the pipe");
        pipe.give();
    }
}
