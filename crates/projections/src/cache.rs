//! Rows a page of events changes, decoded once, changed in place and
//! written back once when the page is applied (a Session row touched by a
//! hundred messages of the page is decoded and encoded once, not a hundred
//! times). Dropped unwritten when the page fails: the transaction is
//! aborted anyway.

use eventlog::hash::KeyedHash;
use hashbrown::HashMap;
use hashbrown::hash_map::EntryRef;
use proto::Message;

use crate::{ViewError, WriteView};

pub(crate) struct RowCache<M> {
    table: &'static str,
    /// Key → (row, `None` when absent or removed; changed).
    rows: HashMap<Vec<u8>, (Option<M>, bool), KeyedHash>,
}

impl<M: Message + Default> RowCache<M> {
    pub(crate) fn new(table: &'static str) -> Self {
        Self { table, rows: HashMap::with_hasher(KeyedHash::default()) }
    }

    fn load(&mut self, w: &mut WriteView<'_>, key: &[u8]) -> Result<&mut (Option<M>, bool), ViewError> {
        Ok(match self.rows.entry_ref(key) {
            EntryRef::Occupied(slot) => slot.into_mut(),
            EntryRef::Vacant(slot) => slot.insert((w.get_msg::<M>(self.table, key)?, false)),
        })
    }

    /// The row at `key` to change, if there is one.
    pub(crate) fn get(&mut self, w: &mut WriteView<'_>, key: &[u8]) -> Result<Option<&mut M>, ViewError> {
        let (row, changed) = self.load(w, key)?;
        *changed |= row.is_some();
        Ok(row.as_mut())
    }

    /// The row at `key` to change, made by `new` when there is none.
    pub(crate) fn get_or_insert_with(
        &mut self,
        w: &mut WriteView<'_>,
        key: &[u8],
        new: impl FnOnce() -> M,
    ) -> Result<&mut M, ViewError> {
        let (row, changed) = self.load(w, key)?;
        *changed = true;
        Ok(row.get_or_insert_with(new))
    }

    pub(crate) fn put(&mut self, key: &[u8], row: M) {
        self.set(key, Some(row));
    }

    pub(crate) fn remove(&mut self, key: &[u8]) {
        self.set(key, None);
    }

    fn set(&mut self, key: &[u8], row: Option<M>) {
        match self.rows.entry_ref(key) {
            EntryRef::Occupied(mut slot) => *slot.get_mut() = (row, true),
            EntryRef::Vacant(slot) => {
                slot.insert((row, true));
            }
        }
    }

    /// Writes the changed rows to the page.
    pub(crate) fn flush(self, w: &mut WriteView<'_>) -> Result<(), ViewError> {
        for (key, (row, changed)) in self.rows {
            match (row, changed) {
                (_, false) => {}
                (Some(row), true) => w.put_msg(self.table, &key, &row)?,
                (None, true) => w.delete(self.table, &key)?,
            }
        }
        Ok(())
    }
}
