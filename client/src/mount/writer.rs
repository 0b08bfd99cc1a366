//! Writes through the mount: a file created (or opened with `O_TRUNC`) is
//! a new eden file, written span by span as the program writes, and linked
//! under its name when the program closes it (`flush`). Until then nobody
//! sees it, which is the eggsfs contract.
//!
//! The kernel's write requests feed a channel, in order; a task reads the
//! channel as a byte stream with the client's own pieces: `encode_input`
//! cuts it into spans of the directory's policy and encodes them (CRCs,
//! parity), `write_span` adds, writes and certifies each, and
//! `link_eden_file` links at the end. The request is answered when the
//! task takes its bytes, so a writer runs at most one request ahead of the
//! encoder, whose queue is bounded: memory stays a few spans per file.
//!
//! What is refused: a write anywhere but at the end (ENOTSUP, and the file
//! is abandoned, so a half-written file is never linked); any write after
//! the file was linked (EBADF). A writer killed by a signal closes its
//! files on the way out; that close is recognised (the process is exiting
//! with a signal) and the file is abandoned too: an unlinked eden file the
//! shard expunges after its deadline.

use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use client::Client;
use client::client::EdenFile;
use client::plan::WritePolicy;
use client::write::{FailedServices, encode_input, spans_ahead, write_span};
use fuser::{Errno, ReplyWrite};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use wire::InodeId;

/// What the kernel's write requests put in the channel.
enum Chunk {
    /// Bytes, and the request to answer once they are taken.
    Data(Vec<u8>, ReplyWrite),
    /// The file is abandoned: the stream fails, so nothing is linked.
    Abandon,
}

/// The channel as a byte stream for `encode_input`.
struct ChunkStream {
    chunks: mpsc::UnboundedReceiver<Chunk>,
    current: Vec<u8>,
    position: usize,
}

impl AsyncRead for ChunkStream {
    fn poll_read(mut self: Pin<&mut Self>, context: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.position < self.current.len() {
                let count = buf.remaining().min(self.current.len() - self.position);
                let position = self.position;
                buf.put_slice(&self.current[position..position + count]);
                self.position += count;
                return Poll::Ready(Ok(()));
            }
            match self.chunks.poll_recv(context) {
                Poll::Ready(Some(Chunk::Data(bytes, reply))) => {
                    reply.written(bytes.len() as u32);
                    self.current = bytes;
                    self.position = 0;
                }
                Poll::Ready(Some(Chunk::Abandon)) => {
                    return Poll::Ready(Err(io::Error::other("the file was abandoned")));
                }
                // The sender is gone: end of the file.
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// The state of a file being written.
enum State {
    Open {
        chunks: mpsc::UnboundedSender<Chunk>,
        task: JoinHandle<client::Result<u64>>,
    },
    /// Linked (or failed, with the errno every later call gets).
    Closed(Option<Errno>),
}

/// A file being written through the mount.
pub struct WriteHandle {
    pub eden: EdenFile,
    /// The inode number the kernel opened: the eden file's for a create,
    /// the replaced file's for an `open(O_TRUNC)`.
    pub kernel_ino: u64,
    pub parent: InodeId,
    pub name: String,
    state: Mutex<(u64, State)>,
}

impl WriteHandle {
    /// Starts writing `eden` to be linked as `parent/name` with `policy`.
    pub fn start(
        client: Client,
        eden: EdenFile,
        kernel_ino: u64,
        parent: InodeId,
        name: String,
        policy: WritePolicy,
    ) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        let stream = ChunkStream { chunks: receiver, current: Vec::new(), position: 0 };
        let link_name = name.clone();
        let task = tokio::spawn(async move {
            let (spans_sender, mut spans) = mpsc::channel(spans_ahead(policy.span_size_bytes));
            let producer = tokio::spawn(encode_input(stream, policy, spans_sender));
            let failed = FailedServices::new();
            let mut size = 0u64;
            let result = async {
                while let Some(span) = spans.recv().await {
                    let span = span?;
                    write_span(&client, eden, &span, &failed).await?;
                    size += span.data.len() as u64;
                }
                client.link_eden_file(eden, parent, &link_name).await?;
                Ok(size)
            }
            .await;
            // On failure the stream is dropped, and with it every waiting
            // write request, which the kernel then sees fail with EIO.
            producer.abort();
            result
        });
        Self { eden, kernel_ino, parent, name, state: Mutex::new((0, State::Open { chunks: sender, task })) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, State)> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Bytes accepted so far (the size the file will have).
    pub fn size(&self) -> u64 {
        self.lock().0
    }

    /// A write request: accepted when at the end of what was written,
    /// refused (and the file abandoned) anywhere else.
    pub fn write(&self, offset: u64, data: &[u8], reply: ReplyWrite) {
        let mut guard = self.lock();
        let (written, state) = &mut *guard;
        let chunks = match state {
            State::Open { chunks, .. } => chunks,
            State::Closed(_) => {
                tracing::warn!(inode = %self.eden.inode, name = %self.name, "write after the file was closed and linked");
                return reply.error(Errno::EBADF);
            }
        };
        if offset != *written {
            tracing::warn!(
                inode = %self.eden.inode, name = %self.name, offset, expected = *written,
                "non-sequential write: eggsfs files are written once, front to back; abandoning the file"
            );
            let _ = chunks.send(Chunk::Abandon);
            *state = State::Closed(Some(Errno::ENOTSUP));
            return reply.error(Errno::ENOTSUP);
        }
        *written += data.len() as u64;
        if let Err(mpsc::error::SendError(Chunk::Data(_, reply))) = chunks.send(Chunk::Data(data.to_vec(), reply)) {
            // The writer task has ended (it failed): flush reports why.
            reply.error(Errno::EIO);
        }
    }

    /// Takes the file out of the open state: returns the task to wait for
    /// when it should be linked, `Err(errno)` when it was closed before.
    /// With `abandon`, the stream fails instead and nothing is linked.
    pub fn close(&self, abandon: bool) -> Result<Option<JoinHandle<client::Result<u64>>>, Errno> {
        let mut guard = self.lock();
        match std::mem::replace(&mut guard.1, State::Closed(None)) {
            State::Open { chunks, task } => {
                if abandon {
                    let _ = chunks.send(Chunk::Abandon);
                    guard.1 = State::Closed(Some(Errno::EIO));
                    return Ok(None);
                }
                drop(chunks);
                Ok(Some(task))
            }
            State::Closed(errno) => {
                guard.1 = State::Closed(errno);
                match errno {
                    Some(errno) => Err(errno),
                    None => Ok(None),
                }
            }
        }
    }

    /// Records how the link ended.
    pub fn finished(&self, errno: Option<Errno>) {
        self.lock().1 = State::Closed(errno);
    }
}

/// True when the process (or thread) `pid` is exiting because of a
/// signal: the close it is doing is the kernel closing a killed writer's
/// files, not the program finishing its file. Read from
/// `/proc/PID/stat`: the flags word (field 9) has `PF_EXITING` once
/// `do_exit` has started, and the exit code (field 52, set before the files
/// are closed) holds the signal in its low 7 bits. Anything unreadable
/// counts as "not killed", so a normal close always links.
pub fn killed_by_signal(pid: u32) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    exiting_with_signal(&text)
}

/// True when process `pid` still has another descriptor open on the file
/// whose FUSE inode number is `ino` under `mountpoint`. A close is not the
/// end of a file when the program keeps a duplicate: a shell's `echo x >
/// file` opens the file, moves it to descriptor 1 with dup2 and closes the
/// original before `echo` writes anything. (The descriptor being closed is
/// already gone from `/proc/PID/fd` when the flush arrives.)
pub fn still_open_elsewhere(pid: u32, mountpoint: &std::path::Path, ino: u64) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    entries.flatten().any(|entry| {
        // Only descriptors on this mount are looked at (no stat of pipes,
        // sockets or other filesystems).
        let on_mount = std::fs::read_link(entry.path()).is_ok_and(|target| target.starts_with(mountpoint));
        on_mount && std::fs::metadata(entry.path()).is_ok_and(|metadata| metadata.ino() == ino)
    })
}

/// `PF_EXITING` in `include/linux/sched.h`.
const PF_EXITING: u64 = 0x4;

/// The `/proc/PID/stat` reading of [`killed_by_signal`].
pub fn exiting_with_signal(stat: &str) -> bool {
    // The command name (field 2) may hold spaces and parentheses: fields
    // are counted after its closing parenthesis, which is field 3's start.
    let Some((_, rest)) = stat.rsplit_once(')') else { return false };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |number: usize| fields.get(number - 3).and_then(|text| text.parse::<u64>().ok());
    let (Some(flags), Some(exit_code)) = (field(9), field(52)) else { return false };
    flags & PF_EXITING != 0 && exit_code & 0x7f != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat_line(flags: u64, exit_code: u64) -> String {
        let mut fields: Vec<String> = (3..=52).map(|_| "0".to_owned()).collect();
        fields[0] = "R".into();
        fields[9 - 3] = flags.to_string();
        fields[52 - 3] = exit_code.to_string();
        format!("1234 (cp (weird) name) {}", fields.join(" "))
    }

    #[test]
    fn a_killed_writer_is_recognised_and_a_normal_exit_is_not() {
        assert!(exiting_with_signal(&stat_line(PF_EXITING | 0x400000, 9)), "SIGKILL");
        assert!(exiting_with_signal(&stat_line(PF_EXITING, 15 | 0x80)), "SIGTERM with a core dump bit");
        assert!(!exiting_with_signal(&stat_line(PF_EXITING, 1 << 8)), "exit(1)");
        assert!(!exiting_with_signal(&stat_line(PF_EXITING, 0)), "exit(0)");
        assert!(!exiting_with_signal(&stat_line(0x400000, 0)), "running");
        assert!(!exiting_with_signal("garbage"), "unreadable");
    }

    #[test]
    fn this_process_is_not_being_killed() {
        assert!(!killed_by_signal(std::process::id()));
    }
}
