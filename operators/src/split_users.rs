//! Split users (Morpheus' `dfp_split_users` module / `DFPSplitUsersStage`): groups a file's
//! rows by user and sends each user's rows to the worker that owns the user (timely `Exchange`
//! by a hash of the user id), so every user's window lives on exactly one worker.
//!
//! Input: [`FileRows`]. Output: [`UserRows`] (exchanged) and [`DeadLetter`]s for rows without a
//! user when no fallback is set. State: none. In a training epoch the generic user gets every
//! row (when `include_generic`); individual users get their own rows when training with
//! `include_individual` and always when scoring (a user without a model falls back to the
//! generic one). `skip_users` / `only_users` filter individual users; skipped rows are counted.

use dfp_engine::hash::fnv1a64;
use dfp_engine::rows::Row;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use timely::dataflow::StreamVec;
use timely::dataflow::operators::Exchange as _;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::vec::Map;

use crate::dead_letter::DeadLetter;
use crate::file_to_batch::FileRows;
use crate::metrics::SharedStats;

/// Split-users settings (`[split]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SplitConfig {
    /// Train a generic model on every row.
    pub include_generic: bool,
    /// Train one model per user.
    pub include_individual: bool,
    /// Users to leave out.
    pub skip_users: Vec<String>,
    /// If not empty, the only users kept.
    pub only_users: Vec<String>,
    /// The user of rows without one; without it such rows are dead-lettered.
    pub fallback_username: Option<String>,
    /// The generic model's user name.
    pub generic_user: String,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self {
            include_generic: true,
            include_individual: true,
            skip_users: Vec::new(),
            only_users: Vec::new(),
            fallback_username: None,
            generic_user: "generic_user".into(),
        }
    }
}

/// One user's rows of one epoch, and what they are for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRows {
    /// The user (the generic user's name for the generic rows).
    pub user: String,
    /// Whether these are the generic user's rows (every user's rows).
    pub generic: bool,
    /// Whether they feed the training window.
    pub train: bool,
    /// Whether they feed the inference window.
    pub infer: bool,
    /// Whether they skip the window state (`payload`).
    pub payload: bool,
    /// The rows.
    pub rows: Vec<Row>,
}

impl UserRows {
    /// The worker-routing hash of the user.
    pub fn route(&self) -> u64 {
        fnv1a64(self.user.as_bytes())
    }
}

/// What splitting one file gave.
#[derive(Debug, Default)]
pub struct Split {
    /// Per user (individuals in name order, then the generic user).
    pub users: Vec<UserRows>,
    /// Rows of skipped users.
    pub skipped: usize,
    /// Rows without a user.
    pub dead: Vec<DeadLetter>,
}

fn generic_name_taken(user: &str, cfg: &SplitConfig) -> bool {
    cfg.include_generic && user == cfg.generic_user
}

/// Splits `rows` by user for an epoch that trains (`train`), scores (`infer`), or both.
pub fn split(rows: Vec<Row>, cfg: &SplitConfig, train: bool, infer: bool, payload: bool) -> Split {
    let mut out = Split::default();
    let generic = train && cfg.include_generic;
    let individual_train = train && cfg.include_individual;
    let mut all = Vec::new();
    let mut by_user: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for mut row in rows {
        if row.user.is_none() {
            match &cfg.fallback_username {
                Some(f) => row.user = Some(f.clone()),
                None => {
                    out.dead.push(DeadLetter::row(
                        "split_users",
                        None,
                        &row,
                        "the record has no username and no fallback_username is set".into(),
                    ));
                    continue;
                }
            }
        }
        let user = row.user.clone().unwrap_or_default();
        if generic_name_taken(&user, cfg) {
            out.dead.push(DeadLetter::row(
                "split_users",
                Some(&user),
                &row,
                format!("the user id is the generic model's name {:?}; set split.generic_user to another name", cfg.generic_user),
            ));
            continue;
        }
        let kept = !cfg.skip_users.contains(&user)
            && (cfg.only_users.is_empty() || cfg.only_users.contains(&user));
        if generic {
            all.push(row.clone());
        }
        if !kept {
            out.skipped += 1;
        } else if individual_train || infer {
            by_user.entry(user).or_default().push(row);
        }
    }
    for (user, rows) in by_user {
        out.users.push(UserRows {
            user,
            generic: false,
            train: individual_train,
            infer,
            payload,
            rows,
        });
    }
    if generic && !all.is_empty() {
        out.users.push(UserRows {
            user: cfg.generic_user.clone(),
            generic: true,
            train: true,
            infer: false,
            payload,
            rows: all,
        });
    }
    out
}

/// The split-users stage as a timely operator.
pub trait SplitUsers<'s> {
    /// Splits rows by user per the epoch's tasks and exchanges them to their owners.
    fn split_users(
        self,
        cfg: SplitConfig,
        stats: SharedStats,
    ) -> (StreamVec<'s, u64, UserRows>, StreamVec<'s, u64, DeadLetter>);
}

impl<'s> SplitUsers<'s> for StreamVec<'s, u64, FileRows> {
    fn split_users(
        self,
        cfg: SplitConfig,
        stats: SharedStats,
    ) -> (StreamVec<'s, u64, UserRows>, StreamVec<'s, u64, DeadLetter>) {
        let (users, dead) = self
            .flat_map(move |file| {
                let t = file.tasks;
                let s = split(file.rows, &cfg, t.train, t.infer, t.payload);
                stats.borrow_mut().skipped += s.skipped as u64;
                let users: Vec<Result<UserRows, DeadLetter>> =
                    s.users.into_iter().map(Ok).collect();
                users.into_iter().chain(s.dead.into_iter().map(Err))
            })
            .ok_err(|r| r);
        (users.exchange(|u: &UserRows| u.route()), dead)
    }
}
