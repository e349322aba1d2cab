//! Holding data until the frontier passes its time: the one mechanism behind "exactly once per
//! window". [`Pending`] keeps, per epoch, a capability and the data received at it; [`ready`]
//! hands back, in time order, every epoch that the input frontiers have passed, so an operator
//! acts on an epoch once, with all of its data, whatever the number of workers.
//!
//! [`ready`]: Pending::ready

use std::collections::BTreeMap;

use timely::dataflow::operators::{Capability, InputCapability};
use timely::progress::frontier::MutableAntichain;

/// Data per pending epoch, with the capability to emit at it.
#[derive(Debug)]
pub struct Pending<D> {
    times: BTreeMap<u64, (Capability<u64>, Vec<D>)>,
}

impl<D> Default for Pending<D> {
    fn default() -> Self {
        Self {
            times: BTreeMap::new(),
        }
    }
}

impl<D> Pending<D> {
    /// Holds `data`, received with `cap`, for output port `port`.
    pub fn stash<'a>(
        &mut self,
        cap: InputCapability<u64>,
        data: impl Iterator<Item = &'a mut Vec<D>>,
        port: usize,
    ) where
        D: 'a,
    {
        let Some(&t) = cap.least() else {
            return;
        };
        let entry = match self.times.entry(t) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => match cap.retain_least(port) {
                Some(c) => v.insert((c, Vec::new())),
                None => return,
            },
        };
        for batch in data {
            entry.1.append(batch);
        }
    }

    /// Takes every epoch that all of `frontiers` have passed, in time order.
    pub fn ready(
        &mut self,
        frontiers: &[&MutableAntichain<u64>],
    ) -> Vec<(Capability<u64>, Vec<D>)> {
        let mut out = Vec::new();
        while let Some((&t, _)) = self.times.first_key_value() {
            if frontiers.iter().any(|f| f.less_equal(&t)) {
                break;
            }
            if let Some(e) = self.times.remove(&t) {
                out.push(e);
            }
        }
        out
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.times.is_empty()
    }
}
