//! The server's disk in the simulator, with power-loss semantics, so that a server crash can land
//! in the middle of a commit or of a data write: the metadata database's file (`Medium::backend`,
//! a redb `StorageBackend`) and the data objects (`Medium::objects`, an `ObjectStore`).
//!
//! A `Medium` outlives server restarts. What the server writes reaches *durable* storage only when
//! it is synced; reads see every write. The simulator can arm a power loss: after a seeded number
//! of further writes and syncs (of the database or of objects, counted together; so inside a
//! commit, between its page writes, its header write and its sync, or among data writes), the
//! power goes. Then a seeded part of what was written since the last sync survives, as a real disk
//! may keep any of it, and every later I/O fails. While the power is off the server's connections
//! carry nothing (`Powered` streams), so the commit that was cut short is never answered, as with
//! a machine that died; the simulator then crashes the server host and restarts it on what
//! survived. A crash that is not a power loss (the process dies) keeps every write (they were in
//! the OS's page cache). All randomness comes from the medium's seeded `Rng`, and objects are
//! visited in inode order, so one seed loses the same bytes.
//!
//! **The metadata file**: each write and length change since the last sync survives or not, on
//! its own (a coin each), in any combination.
//!
//! **Data objects** (one file per inode on a real server, on ext4 or alike): `ObjectStore::sync`
//! makes one object's changes durable (fsync); nothing else does, since the metadata file's sync
//! is that file's alone. An object's unsynced changes (writes, length changes, its removal) at a
//! power loss survive as follows:
//! - *Metadata in order*: a file system journals a file's length changes, its creation and its
//!   unlink in order, so what survives of them is the state after a seeded prefix of the object's
//!   changes (from none to all): its existence and its length come from there.
//! - *Data out of order*: each write's data reaches the disk or not, block by block
//!   (`OBJECT_BLOCK`, a page), independently of the order of writes and of the metadata: a later
//!   write may land while an earlier one does not, and a write may be torn at a block boundary.
//! - *A length without its data*: a length the surviving prefix grew (by a write or `set_len`)
//!   whose bytes did not land reads as zeros there, or as the synced bytes at those offsets
//!   (ext4's `data=ordered` tries to avoid this for appends; XFS and ext3's `data=writeback` show
//!   zeros; the weaker behaviour is the portable contract).
//! - *Data past a lost length change stays out*: after a length change or removal outside the
//!   surviving prefix, the object's blocks are no longer the surviving file's, so data written
//!   later cannot land in it; bytes beyond the surviving length are cut.
//! - *Removal is a namespace change*: an unsynced removal may be lost (the directory was not
//!   synced), and the object comes back with its synced contents, plus what the rules above keep.
//!   `sync` of a missing object changes nothing (an fsync of a file does not make its unlink
//!   durable); a removal is made durable by a later `sync` of the same object re-created, by a
//!   process crash, or by writeback (below). Not modelled: a directory fsync, which the server
//!   never makes for objects.
//! - *Writeback*: the kernel writes dirty data back on its own; an object with more than
//!   `OBJECT_UNSYNCED_MAX` unsynced changes has its oldest half made durable in order, which also
//!   bounds what the medium holds per object.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::workload::Rng;

/// Writes and syncs after arming before the power goes, at most (uniform from 1).
pub const POWER_LOSS_AFTER_MAX: u64 = 8;
/// The unit in which an object's unsynced data reaches the disk, or not, at a power loss (a page).
pub const OBJECT_BLOCK: u64 = 4096;
/// Unsynced changes kept per object; beyond, the oldest half is made durable (writeback).
pub const OBJECT_UNSYNCED_MAX: usize = 1024;
/// Largest simulated object (it is held in memory); a write or length beyond answers EFBIG.
pub const OBJECT_LEN_MAX: u64 = 1 << 26;

#[derive(Debug)]
enum Unsynced {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

/// A change to a data object not yet synced.
#[derive(Debug)]
enum ObjectChange {
    /// Creates the object when it is missing.
    Write {
        offset: u64,
        data: Vec<u8>,
    },
    SetLen(u64),
    Remove,
}

/// One data object. `None`: the object does not exist (there).
#[derive(Debug, Default)]
struct Object {
    /// What survives a power loss.
    durable: Option<Vec<u8>>,
    /// What reads see: `durable` with `unsynced` applied in order.
    current: Option<Vec<u8>>,
    unsynced: Vec<ObjectChange>,
}

fn apply_object(image: &mut Option<Vec<u8>>, change: &ObjectChange) {
    match change {
        ObjectChange::Write { offset, data } => {
            let image = image.get_or_insert_with(Vec::new);
            // Checked against `OBJECT_LEN_MAX` when the change was made.
            let end = *offset as usize + data.len();
            if image.len() < end {
                image.resize(end, 0);
            }
            image[*offset as usize..end].copy_from_slice(data);
        }
        ObjectChange::SetLen(len) => {
            if let Some(image) = image.as_mut() {
                image.resize(*len as usize, 0);
            }
        }
        ObjectChange::Remove => *image = None,
    }
}

/// What survives of one object at a power loss, from its synced image and its unsynced changes
/// (the rules in the module doc).
fn surviving_object(durable: Option<Vec<u8>>, changes: &[ObjectChange], rng: &mut Rng) -> Option<Vec<u8>> {
    // Metadata: the state after a prefix of the changes.
    let committed = rng.below(changes.len() as u64 + 1) as usize;
    let mut exists = durable.is_some();
    let mut len = durable.as_ref().map_or(0, |image| image.len() as u64);
    for change in &changes[..committed] {
        match change {
            ObjectChange::Write { offset, data } => {
                len = if exists { len.max(offset + data.len() as u64) } else { offset + data.len() as u64 };
                exists = true;
            }
            ObjectChange::SetLen(new) if exists => len = *new,
            ObjectChange::SetLen(_) => {}
            ObjectChange::Remove => {
                exists = false;
                len = 0;
            }
        }
    }
    if !exists {
        return None;
    }
    // Data: every write's blocks land or not, until a length change or removal the prefix lost.
    let mut image = durable.unwrap_or_default();
    for (index, change) in changes.iter().enumerate() {
        let in_prefix = index < committed;
        match change {
            ObjectChange::Write { offset, data } => {
                let mut at = *offset;
                let end = offset + data.len() as u64;
                while at < end {
                    let piece_end = ((at / OBJECT_BLOCK + 1) * OBJECT_BLOCK).min(end);
                    if rng.chance(0.5) {
                        let piece = &data[(at - offset) as usize..(piece_end - offset) as usize];
                        if image.len() < piece_end as usize {
                            image.resize(piece_end as usize, 0);
                        }
                        image[at as usize..piece_end as usize].copy_from_slice(piece);
                    }
                    at = piece_end;
                }
            }
            ObjectChange::SetLen(new) if in_prefix => image.resize(*new as usize, 0),
            ObjectChange::Remove if in_prefix => image.clear(),
            ObjectChange::SetLen(_) | ObjectChange::Remove => break,
        }
    }
    image.resize(len as usize, 0);
    Some(image)
}

struct State {
    /// What survives a power loss.
    durable: Vec<u8>,
    /// What reads see: `durable` with `unsynced` applied in order.
    current: Vec<u8>,
    unsynced: Vec<Unsynced>,
    /// The data objects, by inode (ordered: a power loss visits them, and draws from `rng`, in
    /// one order).
    objects: BTreeMap<u64, Object>,
    /// Writes and syncs left before the power goes, when armed.
    countdown: Option<u64>,
    powered: bool,
    rng: Rng,
}

impl State {
    /// Whether the object exists now (as reads see it).
    fn object_exists(&self, ino: u64) -> bool {
        self.objects.get(&ino).is_some_and(|object| object.current.is_some())
    }
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
            .field("objects", &state.objects.len())
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
                objects: BTreeMap::new(),
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
            for object in state.objects.values_mut() {
                object.durable = object.current.clone();
                object.unsynced.clear();
            }
        }
    }

    /// The machine restarts: the power is back, and reads see what survived.
    pub fn restore_power(&self) {
        let mut state = self.state();
        state.current = state.durable.clone();
        state.unsynced.clear();
        state.countdown = None;
        state.powered = true;
        state.objects.retain(|_, object| object.durable.is_some());
        for object in state.objects.values_mut() {
            object.current = object.durable.clone();
            object.unsynced.clear();
        }
    }

    /// The backend a starting server opens its metadata database on.
    pub fn backend(self: &Arc<Medium>) -> Box<dyn redb::StorageBackend> {
        Box::new(Disk(self.clone()))
    }

    /// The data objects a starting server keeps file contents in
    /// (`ServerConfig::object_store`).
    pub fn objects(self: &Arc<Medium>) -> Arc<dyn rustre_store::ObjectStore> {
        Arc::new(Objects(self.clone()))
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
        let State { objects, rng, .. } = state;
        for object in objects.values_mut() {
            if !object.unsynced.is_empty() {
                let changes = std::mem::take(&mut object.unsynced);
                object.durable = surviving_object(object.durable.take(), &changes, rng);
            }
        }
        state.countdown = None;
        state.powered = false;
    }
}

fn object_too_large() -> std::io::Error {
    std::io::Error::from_raw_os_error(rustre_proto::Errno::EFBIG.0)
}

/// The object store's view of the medium.
struct Objects(Arc<Medium>);

impl Objects {
    /// Makes one change to an object: counted against an armed power loss, applied to what reads
    /// see, and kept until a sync. A length change or removal of a missing object does nothing
    /// (no I/O).
    fn change(&self, ino: u64, change: ObjectChange) -> std::io::Result<()> {
        let mut state = self.0.state();
        if !state.powered {
            return Err(power_is_off());
        }
        if !state.object_exists(ino) && !matches!(change, ObjectChange::Write { .. }) {
            return Ok(());
        }
        if !Medium::spend(&mut state) {
            return Err(power_is_off());
        }
        let object = state.objects.entry(ino).or_default();
        apply_object(&mut object.current, &change);
        object.unsynced.push(change);
        if object.unsynced.len() > OBJECT_UNSYNCED_MAX {
            // Writeback: the oldest changes reach the disk, in order.
            let written: Vec<ObjectChange> = object.unsynced.drain(..OBJECT_UNSYNCED_MAX / 2).collect();
            for change in &written {
                apply_object(&mut object.durable, change);
            }
        }
        Ok(())
    }
}

impl rustre_store::ObjectStore for Objects {
    fn read_at(&self, ino: u64, offset: u64, buffer: &mut [u8]) -> std::io::Result<usize> {
        let state = self.0.state();
        if !state.powered {
            return Err(power_is_off());
        }
        let Some(image) = state.objects.get(&ino).and_then(|object| object.current.as_ref()) else { return Ok(0) };
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(image.len());
        let end = start + buffer.len().min(image.len() - start);
        buffer[..end - start].copy_from_slice(&image[start..end]);
        Ok(end - start)
    }

    fn write_at(&self, ino: u64, offset: u64, data: &[u8]) -> std::io::Result<()> {
        if offset.checked_add(data.len() as u64).is_none_or(|end| end > OBJECT_LEN_MAX) {
            return Err(object_too_large());
        }
        self.change(ino, ObjectChange::Write { offset, data: data.to_vec() })
    }

    fn set_len(&self, ino: u64, len: u64) -> std::io::Result<()> {
        if len > OBJECT_LEN_MAX {
            return Err(object_too_large());
        }
        self.change(ino, ObjectChange::SetLen(len))
    }

    fn len(&self, ino: u64) -> std::io::Result<u64> {
        let state = self.0.state();
        if !state.powered {
            return Err(power_is_off());
        }
        Ok(state.objects.get(&ino).and_then(|object| object.current.as_ref()).map_or(0, |image| image.len() as u64))
    }

    fn sync(&self, ino: u64) -> std::io::Result<()> {
        let mut state = self.0.state();
        if !state.powered {
            return Err(power_is_off());
        }
        // A missing object has nothing to sync (and its pending removal stays pending): no I/O.
        if !state.object_exists(ino) {
            return Ok(());
        }
        if !Medium::spend(&mut state) {
            return Err(power_is_off());
        }
        if let Some(object) = state.objects.get_mut(&ino) {
            object.durable = object.current.clone();
            object.unsynced.clear();
        }
        Ok(())
    }

    fn remove(&self, ino: u64) -> std::io::Result<()> {
        self.change(ino, ObjectChange::Remove)
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

    use rustre_store::ObjectStore;

    /// The object's contents as they read through the store (`None`: missing, which the medium
    /// tells from empty and the trait does not).
    fn contents(medium: &Arc<Medium>, ino: u64) -> Option<Vec<u8>> {
        let objects = medium.objects();
        let len = objects.len(ino).unwrap();
        let mut buffer = vec![0; len as usize + 1];
        assert_eq!(objects.read_at(ino, 0, &mut buffer).unwrap(), len as usize);
        buffer.truncate(len as usize);
        medium.state().object_exists(ino).then_some(buffer)
    }

    /// A fresh medium, powered, and its object store.
    fn medium(seed: u64) -> (Arc<Medium>, Arc<dyn ObjectStore>) {
        let medium = Medium::new(seed);
        let objects = medium.objects();
        (medium, objects)
    }

    /// Power off now, then back on: what survived.
    fn power_cycle(medium: &Arc<Medium>) {
        medium.cut_power();
        assert!(!medium.powered());
        medium.restore_power();
    }

    // An object's synced contents survive a power loss (armed, going in the middle of its
    // writes); unsynced writes past them leave the object between its synced and its current
    // length, each byte either written or zero; while the power is off every call fails.
    #[test]
    fn a_power_loss_keeps_what_was_synced_of_an_object() {
        for seed in 0..40 {
            let (medium, objects) = medium(seed);
            objects.write_at(7, 0, b"synced").unwrap();
            objects.sync(7).unwrap();
            medium.arm();
            let mut lost = false;
            for round in 0..POWER_LOSS_AFTER_MAX {
                if objects.write_at(7, 6 + round, b"x").is_err() {
                    lost = true;
                    break;
                }
            }
            assert!(lost, "seed {seed}: the power went within the bound");
            let mut buffer = [0; 1];
            assert!(objects.read_at(7, 0, &mut buffer).is_err() && objects.len(7).is_err());
            assert!(objects.sync(7).is_err() && objects.set_len(7, 0).is_err() && objects.remove(7).is_err());
            medium.restore_power();
            let survived = contents(&medium, 7).expect("a synced object stays");
            assert_eq!(&survived[..6], b"synced", "seed {seed}");
            assert!(survived.len() <= 6 + POWER_LOSS_AFTER_MAX as usize, "seed {seed}");
            assert!(survived[6..].iter().all(|&byte| byte == b'x' || byte == 0), "seed {seed}: {survived:?}");
        }
    }

    // Length changes survive in order: a prefix of them, never a later one without an earlier
    // one; and every outcome happens across seeds.
    #[test]
    fn an_object_keeps_a_prefix_of_its_length_changes() {
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let (medium, objects) = medium(seed);
            objects.write_at(3, 0, b"0123456789").unwrap();
            objects.sync(3).unwrap();
            objects.set_len(3, 4).unwrap();
            objects.set_len(3, 2).unwrap();
            objects.set_len(3, 6).unwrap();
            power_cycle(&medium);
            let survived = contents(&medium, 3).expect("a synced object stays");
            let expected: &[u8] = match survived.len() {
                10 => b"0123456789",
                4 => b"0123",
                2 => b"01",
                6 => b"01\0\0\0\0",
                other => panic!("seed {seed}: length {other} is no prefix of the changes"),
            };
            assert_eq!(survived, expected, "seed {seed}");
            seen.insert(survived.len());
        }
        assert_eq!(seen.len(), 4, "every prefix happens: {seen:?}");
    }

    // Data reaches the disk block by block, in any order and apart from the length: a later
    // write may land without an earlier one, and a length may survive without its data (zeros).
    #[test]
    fn unsynced_data_lands_out_of_order_and_a_length_may_come_without_it() {
        let block = OBJECT_BLOCK as usize;
        let (mut out_of_order, mut length_without_data, mut torn) = (false, false, false);
        for seed in 0..128 {
            let (medium, objects) = medium(seed);
            objects.write_at(5, 0, b"").unwrap();
            objects.sync(5).unwrap();
            objects.write_at(5, 0, &vec![b'a'; block]).unwrap();
            objects.write_at(5, OBJECT_BLOCK, &vec![b'b'; 2 * block]).unwrap();
            power_cycle(&medium);
            let survived = contents(&medium, 5).expect("a synced object stays");
            assert!([0, block, 3 * block].contains(&survived.len()), "seed {seed}: length {}", survived.len());
            let blocks: Vec<&[u8]> = survived.chunks(block).collect();
            for (index, piece) in blocks.iter().enumerate() {
                let data = if index == 0 { b'a' } else { b'b' };
                assert!(piece.iter().all(|&byte| byte == data) || piece.iter().all(|&byte| byte == 0), "seed {seed}");
            }
            let landed = |index: usize| blocks.get(index).is_some_and(|piece| piece[0] != 0);
            out_of_order |= blocks.len() == 3 && !landed(0) && landed(1);
            length_without_data |= !blocks.is_empty() && !landed(0);
            torn |= blocks.len() == 3 && landed(1) != landed(2);
        }
        assert!(out_of_order && length_without_data && torn, "{out_of_order} {length_without_data} {torn}");
    }

    // Data written after a truncate the power loss undid cannot land in the surviving file (its
    // blocks are the truncated file's no longer).
    #[test]
    fn data_written_after_a_lost_truncate_stays_out() {
        for seed in 0..64 {
            let (medium, objects) = medium(seed);
            objects.write_at(9, 0, &[b'x'; 100]).unwrap();
            objects.sync(9).unwrap();
            objects.set_len(9, 0).unwrap();
            objects.write_at(9, 0, b"ab").unwrap();
            power_cycle(&medium);
            let survived = contents(&medium, 9).expect("a synced object stays");
            match survived.len() {
                100 => assert_eq!(survived, [b'x'; 100], "seed {seed}"),
                0 => {}
                2 => assert!(survived == b"ab" || survived == [0, 0], "seed {seed}: {survived:?}"),
                other => panic!("seed {seed}: length {other}"),
            }
        }
    }

    // A removal is a namespace change: unsynced, a power loss may undo it (the synced contents
    // come back) or keep it; a sync of the removed object does not make it durable; an object
    // never synced may vanish altogether.
    #[test]
    fn an_unsynced_removal_may_be_lost() {
        let (mut kept, mut undone, mut new_lost) = (false, false, false);
        for seed in 0..64 {
            let (medium, objects) = medium(seed);
            objects.write_at(1, 0, b"keep").unwrap();
            objects.sync(1).unwrap();
            objects.remove(1).unwrap();
            objects.sync(1).unwrap();
            assert_eq!(objects.len(1).unwrap(), 0);
            objects.write_at(2, 0, b"new").unwrap();
            power_cycle(&medium);
            match contents(&medium, 1) {
                None => kept = true,
                Some(survived) => {
                    assert_eq!(survived, b"keep", "seed {seed}");
                    undone = true;
                }
            }
            match contents(&medium, 2) {
                None => new_lost = true,
                Some(survived) => assert!([&b"new"[..], &[0; 3]].contains(&survived.as_slice()), "seed {seed}"),
            }
        }
        assert!(kept && undone && new_lost, "{kept} {undone} {new_lost}");
    }

    // A process crash (no power loss) keeps every change to objects, removals included.
    #[test]
    fn a_process_crash_keeps_every_object_change() {
        let (medium, objects) = medium(2);
        objects.write_at(1, 0, b"unsynced").unwrap();
        objects.set_len(1, 4).unwrap();
        objects.write_at(2, 0, b"gone").unwrap();
        objects.sync(2).unwrap();
        objects.remove(2).unwrap();
        medium.process_crashed();
        medium.restore_power();
        assert_eq!(contents(&medium, 1).as_deref(), Some(&b"unsy"[..]));
        assert_eq!(contents(&medium, 2), None);
    }

    // Many unsynced changes to one object are written back in order (the kernel's writeback),
    // so the medium keeps few: the oldest survive a power loss for sure.
    #[test]
    fn writeback_bounds_an_objects_unsynced_changes() {
        let (medium, objects) = medium(3);
        for index in 0..=OBJECT_UNSYNCED_MAX as u64 {
            objects.write_at(4, index, &[1]).unwrap();
        }
        assert!(medium.state().objects[&4].unsynced.len() <= OBJECT_UNSYNCED_MAX);
        power_cycle(&medium);
        let survived = contents(&medium, 4).expect("written back");
        assert!(survived.len() >= OBJECT_UNSYNCED_MAX / 2);
        assert!(survived[..OBJECT_UNSYNCED_MAX / 2].iter().all(|&byte| byte == 1));
    }

    // Objects too large for a simulated disk held in memory answer EFBIG, and change nothing.
    #[test]
    fn an_object_beyond_the_simulated_size_is_refused() {
        let (_medium, objects) = medium(4);
        let error = objects.write_at(1, OBJECT_LEN_MAX, b"x").unwrap_err();
        assert_eq!(error.raw_os_error(), Some(rustre_proto::Errno::EFBIG.0));
        assert!(objects.write_at(1, u64::MAX, b"x").is_err());
        assert!(objects.set_len(1, OBJECT_LEN_MAX + 1).is_err());
        assert_eq!(objects.len(1).unwrap(), 0);
    }

    // The real store on the medium (metadata and objects), with the task committer: a file
    // written and fsynced as the server does it (data synced, then a durable commit) survives a
    // power loss whole. A later write, neither synced nor durably recorded, may land in the
    // object or not; the file is open for writing (a `WRITABLE` row), so the restart gives it
    // the object's length: the write whole, its length with zeros (its data lost), or nothing.
    #[test]
    fn a_store_on_the_medium_keeps_fsynced_data_across_a_power_loss() {
        use rustre_proto::clock::{Clock, SystemClock};
        use rustre_proto::msg::{Caller, OpenFlags, ROOT_INO};
        use rustre_store::{CommitMode, Store};

        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..32 {
            let dir = tempfile::tempdir().unwrap();
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let clock: Arc<dyn Clock> = Arc::new(SystemClock);
            let medium = Medium::new(seed);
            let open = || {
                Store::open_with(dir.path(), clock.as_ref(), Some(medium.backend()), Some(medium.objects())).unwrap()
            };
            let store = open();
            assert!(!dir.path().join("objects").exists(), "no local objects beside the medium's");
            let committer = runtime.block_on(async { store.start_committer_in(CommitMode::Task, clock.clone(), ()) });
            let objects = store.objects().clone();
            runtime.block_on(async {
                let create = committer.run(move |ns, _| {
                    Ok(ns.open(ROOT_INO, b"f", OpenFlags::CREATE | OpenFlags::WRITE, 0o644, &Caller::ROOT)?.attr.ino)
                });
                let ino = create.await.unwrap();
                objects.write_at(ino, 0, b"durable").unwrap();
                committer.run(move |ns, _| ns.note_write(ino, 7, &Caller::ROOT)).await.unwrap();
                objects.sync(ino).unwrap();
                let fsync = committer.run(|ns, _| {
                    ns.require_durable();
                    Ok(())
                });
                fsync.await.unwrap();
                objects.write_at(ino, 7, b" and more").unwrap();
                committer.run(move |ns, _| ns.note_write(ino, 16, &Caller::ROOT)).await.unwrap();
                committer.stop().await;
            });
            medium.cut_power();
            drop((committer, objects, store));
            medium.restore_power();
            let store = open();
            let attr = store.read().unwrap().lookup(ROOT_INO, b"f", &Caller::ROOT).unwrap();
            let mut data = vec![0; attr.size as usize];
            assert_eq!(store.objects().read_at(attr.ino, 0, &mut data).unwrap(), data.len());
            let outcomes: [&[u8]; 3] = [b"durable", b"durable and more", b"durable\0\0\0\0\0\0\0\0\0"];
            assert!(outcomes.contains(&data.as_slice()), "seed {seed}: {:?}", String::from_utf8_lossy(&data));
            seen.insert(data);
        }
        assert_eq!(seen.len(), 3, "every outcome happens");
    }

    /// A file written "durable and more" and fsynced, open for writing, then shrunk to 7 bytes
    /// by a durable setattr, its object not cut; with `write_after`, the object is cut and
    /// ", again!" written (and synced) after the 7 bytes, as the server does it. Then the power
    /// goes. Returns what each seed's next start shows: the size and the object's bytes.
    fn shrunk_then(write_after: bool) -> Vec<(u64, Vec<u8>)> {
        use rustre_proto::clock::{Clock, SystemClock};
        use rustre_proto::msg::{Caller, OpenFlags, ROOT_INO, SetAttrIn};
        use rustre_store::{CommitMode, Store};

        (0..16)
            .map(|seed| {
                let dir = tempfile::tempdir().unwrap();
                let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
                let clock: Arc<dyn Clock> = Arc::new(SystemClock);
                let medium = Medium::new(seed);
                let open = || {
                    Store::open_with(dir.path(), clock.as_ref(), Some(medium.backend()), Some(medium.objects()))
                        .unwrap()
                };
                let store = open();
                let committer =
                    runtime.block_on(async { store.start_committer_in(CommitMode::Task, clock.clone(), ()) });
                let objects = store.objects().clone();
                runtime.block_on(async {
                    let ino = committer
                        .run(move |ns, _| {
                            let flags = OpenFlags::CREATE | OpenFlags::WRITE;
                            let ino = ns.open(ROOT_INO, b"f", flags, 0o644, &Caller::ROOT)?.attr.ino;
                            ns.mark_writable(ino)?;
                            Ok(ino)
                        })
                        .await
                        .unwrap();
                    objects.write_at(ino, 0, b"durable and more").unwrap();
                    objects.sync(ino).unwrap();
                    committer
                        .run(move |ns, _| {
                            ns.note_write(ino, 16, &Caller::ROOT)?;
                            ns.require_durable();
                            Ok(())
                        })
                        .await
                        .unwrap();
                    let shrink = SetAttrIn { size: Some(7), ..SetAttrIn::default() };
                    committer.run(move |ns, _| ns.setattr(ino, &shrink, &Caller::ROOT, true)).await.unwrap();
                    if write_after {
                        objects.set_len(ino, 7).unwrap();
                        objects.write_at(ino, 7, b", again!").unwrap();
                        objects.sync(ino).unwrap();
                        committer.run(move |ns, _| ns.note_write(ino, 15, &Caller::ROOT)).await.unwrap();
                    }
                    committer.stop().await;
                });
                medium.cut_power();
                drop((committer, objects, store));
                medium.restore_power();
                let store = open();
                let attr = store.read().unwrap().lookup(ROOT_INO, b"f", &Caller::ROOT).unwrap();
                let mut data = vec![0; 64];
                let len = store.objects().read_at(attr.ino, 0, &mut data).unwrap();
                data.truncate(len);
                (attr.size, data)
            })
            .collect()
    }

    // The server cuts a shrunk file's object after the shrink commits; a crash in between left
    // the object long, and the next start took the old length back as the size (the file open
    // for writing, `reconcile_writable`): a durable truncate undone (simulator seeds 1094, 2739,
    // 2934, 3848). The start now finishes the cut first (`record::CUTS`).
    #[test]
    fn a_shrink_whose_object_was_not_cut_is_finished_at_start() {
        for (seed, (size, data)) in shrunk_then(false).into_iter().enumerate() {
            assert_eq!((size, data.as_slice()), (7, &b"durable"[..]), "seed {seed}");
        }
    }

    // A write after the cut may put its bytes past the recorded cut, with its size update in a
    // batch that is not durable: the row of the cut must go durably with that write, or a start
    // would cut the bytes of an acknowledged write away.
    #[test]
    fn a_write_after_a_cut_survives_the_start_that_finishes_cuts() {
        let outcomes = shrunk_then(true);
        for (seed, (size, data)) in outcomes.into_iter().enumerate() {
            assert_eq!((size, data.as_slice()), (15, &b"durable, again!"[..]), "seed {seed}");
        }
    }

    // One seed, one outcome: the same changes lose the same bytes.
    #[test]
    fn a_power_loss_is_the_same_for_the_same_seed() {
        let run = |seed: u64| {
            let (medium, objects) = medium(seed);
            for ino in 1..6 {
                objects.write_at(ino, 0, &[ino as u8; 9000]).unwrap();
                if ino % 2 == 0 {
                    objects.sync(ino).unwrap();
                }
                objects.set_len(ino, 5000).unwrap();
                objects.write_at(ino, 100, b"later").unwrap();
            }
            power_cycle(&medium);
            (1..6).map(|ino| contents(&medium, ino)).collect::<Vec<_>>()
        };
        for seed in 0..8 {
            assert_eq!(run(seed), run(seed), "seed {seed}");
        }
    }
}
