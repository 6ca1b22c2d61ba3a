//! The server's metadata disk in the simulator, with power-loss semantics, so that a server crash
//! can land in the middle of a commit.
//!
//! A `Medium` outlives server restarts. What redb writes reaches *durable* storage only when it is
//! synced; reads see every write. The simulator can arm a power loss: after a seeded number of
//! further writes and syncs (so inside a commit, between its page writes, its header write and its
//! sync), the power goes. Then a seeded subset of the writes made since the last sync survives,
//! as a real disk may keep any of them, and every later I/O fails. While the power is off the
//! server's connections carry nothing (`Powered` streams), so the commit that was cut short is
//! never answered, as with a machine that died; the simulator then crashes the server host and
//! restarts it on what survived. A crash that is not a power loss (the process dies) keeps every
//! write (they were in the OS's page cache).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::workload::Rng;

/// Writes and syncs after arming before the power goes, at most (uniform from 1).
pub const POWER_LOSS_AFTER_MAX: u64 = 8;

#[derive(Debug)]
enum Unsynced {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

struct State {
    /// What survives a power loss.
    durable: Vec<u8>,
    /// What reads see: `durable` with `unsynced` applied in order.
    current: Vec<u8>,
    unsynced: Vec<Unsynced>,
    /// Writes and syncs left before the power goes, when armed.
    countdown: Option<u64>,
    powered: bool,
    rng: Rng,
}

/// The disk, shared by every run of the server host.
pub struct Medium {
    state: Mutex<State>,
}

// By hand: redb may log its backend, and the bytes are of no use there.
impl std::fmt::Debug for Medium {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state();
        formatter
            .debug_struct("Medium")
            .field("durable_len", &state.durable.len())
            .field("current_len", &state.current.len())
            .field("unsynced", &state.unsynced.len())
            .field("powered", &state.powered)
            .finish()
    }
}

fn apply(image: &mut Vec<u8>, change: &Unsynced) {
    match change {
        Unsynced::Write { offset, data } => {
            let end = *offset as usize + data.len();
            if image.len() < end {
                image.resize(end, 0);
            }
            image[*offset as usize..end].copy_from_slice(data);
        }
        Unsynced::SetLen(len) => image.resize(*len as usize, 0),
    }
}

fn power_is_off() -> std::io::Error {
    std::io::Error::other("the simulated disk lost its power")
}

impl Medium {
    pub fn new(seed: u64) -> Arc<Medium> {
        Arc::new(Medium {
            state: Mutex::new(State {
                durable: Vec::new(),
                current: Vec::new(),
                unsynced: Vec::new(),
                countdown: None,
                powered: true,
                rng: Rng::new(seed),
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("disk lock")
    }

    /// The power goes after `1..=POWER_LOSS_AFTER_MAX` more writes and syncs (seeded).
    pub fn arm(&self) {
        let mut state = self.state();
        assert!(state.powered && state.countdown.is_none(), "one power loss at a time");
        let after = 1 + state.rng.below(POWER_LOSS_AFTER_MAX);
        state.countdown = Some(after);
    }

    pub fn armed(&self) -> bool {
        self.state().countdown.is_some()
    }

    pub fn powered(&self) -> bool {
        self.state().powered
    }

    /// The server process died without a power loss: what it wrote is kept, and a loss that was
    /// armed is called off.
    pub fn process_crashed(&self) {
        let mut state = self.state();
        if state.powered {
            state.durable = state.current.clone();
            state.unsynced.clear();
            state.countdown = None;
        }
    }

    /// The machine restarts: the power is back, and reads see what survived.
    pub fn restore_power(&self) {
        let mut state = self.state();
        state.current = state.durable.clone();
        state.unsynced.clear();
        state.countdown = None;
        state.powered = true;
    }

    /// The backend a starting server opens its metadata database on.
    pub fn backend(self: &Arc<Medium>) -> Box<dyn redb::StorageBackend> {
        Box::new(Disk(self.clone()))
    }

    /// Counts one write or sync against an armed power loss; false (and the power is off) when
    /// this one does not happen.
    fn spend(state: &mut State) -> bool {
        if !state.powered {
            return false;
        }
        let Some(left) = state.countdown.as_mut() else { return true };
        *left -= 1;
        if *left > 0 {
            return true;
        }
        Medium::power_goes(state);
        false
    }

    /// The power goes now, between I/Os (an armed loss whose I/Os did not come): what was not
    /// synced may be lost, and so is whatever the server kept in memory.
    pub fn cut_power(&self) {
        let mut state = self.state();
        if state.powered {
            Medium::power_goes(&mut state);
        }
    }

    /// Each unsynced change may or may not have reached the medium; the power is off.
    fn power_goes(state: &mut State) {
        let unsynced = std::mem::take(&mut state.unsynced);
        let mut durable = std::mem::take(&mut state.durable);
        for change in &unsynced {
            if state.rng.chance(0.5) {
                apply(&mut durable, change);
            }
        }
        state.durable = durable;
        state.countdown = None;
        state.powered = false;
    }
}

/// redb's view of the medium.
#[derive(Debug)]
struct Disk(Arc<Medium>);

impl redb::StorageBackend for Disk {
    fn len(&self) -> std::io::Result<u64> {
        let state = self.0.state();
        if !state.powered {
            return Err(power_is_off());
        }
        Ok(state.current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let state = self.0.state();
        if !state.powered {
            return Err(power_is_off());
        }
        let end = offset as usize + out.len();
        if end > state.current.len() {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "read past the end of the disk"));
        }
        out.copy_from_slice(&state.current[offset as usize..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        let mut state = self.0.state();
        if !Medium::spend(&mut state) {
            return Err(power_is_off());
        }
        let change = Unsynced::SetLen(len);
        apply(&mut state.current, &change);
        state.unsynced.push(change);
        Ok(())
    }

    fn sync_data(&self) -> std::io::Result<()> {
        let mut state = self.0.state();
        if !Medium::spend(&mut state) {
            return Err(power_is_off());
        }
        state.durable = state.current.clone();
        state.unsynced.clear();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let mut state = self.0.state();
        if !Medium::spend(&mut state) {
            return Err(power_is_off());
        }
        let change = Unsynced::Write { offset, data: data.to_vec() };
        apply(&mut state.current, &change);
        state.unsynced.push(change);
        Ok(())
    }
}

/// A server connection that carries nothing once the disk's power is off: the machine is dead,
/// so no answer (an EIO of the commit that was cut short, say) may leave it.
pub struct Powered<S> {
    pub inner: S,
    pub medium: Arc<Medium>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Powered<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if !self.medium.powered() {
            return Poll::Pending; // the host is crashed before this is polled again
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Powered<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        if !self.medium.powered() {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if !self.medium.powered() {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Synced writes always survive a power loss; unsynced ones may or may not; after the loss,
    // every I/O fails until a restart, which reads what survived.
    #[test]
    fn a_power_loss_keeps_what_was_synced() {
        for seed in 0..20 {
            let medium = Medium::new(seed);
            medium.restore_power();
            let disk = medium.backend();
            disk.write(0, b"synced").unwrap();
            disk.sync_data().unwrap();
            medium.arm();
            let mut lost = false;
            for round in 0..POWER_LOSS_AFTER_MAX {
                if disk.write(6 + round, b"x").is_err() {
                    lost = true;
                    break;
                }
            }
            assert!(lost, "seed {seed}: the power went within the bound");
            assert!(!medium.powered());
            assert!(disk.sync_data().is_err() && disk.len().is_err());
            medium.restore_power();
            let disk = medium.backend();
            let mut head = [0; 6];
            disk.read(0, &mut head).unwrap();
            assert_eq!(&head, b"synced", "seed {seed}");
            assert!(disk.len().unwrap() <= 6 + POWER_LOSS_AFTER_MAX);
        }
    }

    #[test]
    fn a_process_crash_keeps_every_write() {
        let medium = Medium::new(1);
        let disk = medium.backend();
        disk.write(0, b"unsynced").unwrap();
        medium.process_crashed();
        medium.restore_power();
        let disk = medium.backend();
        assert_eq!(disk.len().unwrap(), 8);
    }
}
