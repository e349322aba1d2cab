//! Split users (Morpheus' `dfp_split_users` module / `DFPSplitUsersStage`): groups a file's
//! rows by user and sends each user's rows to the worker that owns the user (timely `Exchange`
//! by a hash of the user id), so every user's window lives on exactly one worker.
//!
//! Input: [`FileRows`]. Output: [`UserRows`] (exchanged) and [`DeadLetter`]s for rows of a
//! user who has the generic model's name. State: none. In a training epoch the generic user
//! gets every row (when `include_generic`); individual users get their own rows when training
//! with `include_individual` and always when scoring (a user without a model falls back to the
//! generic one); a load-only `streaming` epoch routes rows as a training epoch does, marked to
//! join the training history only. Rows without a user belong to Morpheus' users `nan`
//! (missing) and `None` (null), or to `fallback_username` when it is set. `skip_users` /
//! `only_users` filter individual users; skipped rows are counted.

use dfp_engine::hash::fnv1a64;
use std::sync::Arc;

use dfp_engine::rows::Row;
use dfp_engine::schema::{MISSING_STRING, NULL_STRING};
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
    /// The user of rows without one (the reader names them as Morpheus does: `nan` when the
    /// field is missing, `None` when it is null); without it they keep those names and get a
    /// model like any other user, as in Morpheus.
    pub fallback_username: Option<String>,
    /// The generic model's user name.
    pub generic_user: String,
    /// The most rows the generic model trains on (none: all of its window): a stratified
    /// sample, see [`crate::training::sample_generic`].
    pub generic_max_rows: Option<usize>,
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
            generic_max_rows: None,
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
    /// Whether they only join the training history (a load-only `streaming` input): placed in
    /// the training window, no window emitted.
    pub history_only: bool,
    /// The rows (the generic user's share them with their users').
    pub rows: Vec<Arc<Row>>,
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
    /// Rows of a user named as the generic model.
    pub dead: Vec<DeadLetter>,
}

/// Whether `user` is the generic model's name while the generic model trains.
pub fn generic_name_taken(user: &str, cfg: &SplitConfig) -> bool {
    cfg.include_generic && user == cfg.generic_user
}

/// Splits `rows` by user for an epoch that trains (`train`), scores (`infer`), both, or
/// neither (a load-only input: `streaming` rows join the training history, `payload` rows are
/// only read).
pub fn split(rows: Vec<Row>, cfg: &SplitConfig, train: bool, infer: bool, payload: bool) -> Split {
    let mut out = Split::default();
    let history_only = !train && !infer && !payload;
    let generic = (train || history_only) && cfg.include_generic;
    let individual_train = (train || history_only) && cfg.include_individual;
    let mut all = Vec::new();
    let mut by_user: BTreeMap<String, Vec<Arc<Row>>> = BTreeMap::new();
    for mut row in rows {
        let unnamed = row
            .user
            .as_deref()
            .is_none_or(|u| u == MISSING_STRING || u == NULL_STRING);
        if unnamed && let Some(f) = &cfg.fallback_username {
            row.user = Some(f.clone());
        }
        let user = row
            .user
            .get_or_insert_with(|| MISSING_STRING.to_string())
            .clone();
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
        let row = Arc::new(row);
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
            history_only,
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
            history_only,
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

#[cfg(test)]
mod tests {
    use dfp_engine::rows::Origin;

    use super::*;

    fn row(user: Option<&str>, record: u64) -> Row {
        Row {
            ts: 0,
            user: user.map(str::to_string),
            origin: Origin {
                epoch: 0,
                file: 0,
                record,
            },
            values: Vec::new(),
        }
    }

    fn rows() -> Vec<Row> {
        vec![
            row(Some("bob"), 0),
            row(Some(MISSING_STRING), 1),
            row(Some(NULL_STRING), 2),
            row(Some("alice"), 3),
            row(Some("bob"), 4),
        ]
    }

    fn users(s: &Split) -> Vec<(&str, usize, bool, bool, bool)> {
        s.users
            .iter()
            .map(|u| {
                (
                    u.user.as_str(),
                    u.rows.len(),
                    u.train,
                    u.infer,
                    u.history_only,
                )
            })
            .collect()
    }

    #[test]
    fn users_without_a_name_are_users_unless_a_fallback_is_set() {
        let cfg = SplitConfig::default();
        let s = split(rows(), &cfg, true, false, false);
        assert_eq!(
            users(&s),
            [
                ("None", 1, true, false, false),
                ("alice", 1, true, false, false),
                ("bob", 2, true, false, false),
                ("nan", 1, true, false, false),
                ("generic_user", 5, true, false, false),
            ]
        );
        let cfg = SplitConfig {
            fallback_username: Some("unknown".into()),
            ..SplitConfig::default()
        };
        let s = split(rows(), &cfg, false, true, false);
        assert_eq!(
            users(&s),
            [
                ("alice", 1, false, true, false),
                ("bob", 2, false, true, false),
                ("unknown", 2, false, true, false),
            ]
        );
    }

    #[test]
    fn filters_skip_and_keep_users_and_guard_the_generic_name() {
        let cfg = SplitConfig {
            skip_users: vec!["bob".into()],
            ..SplitConfig::default()
        };
        let mut input = rows();
        input.push(row(Some("generic_user"), 5));
        let s = split(input, &cfg, true, true, false);
        assert_eq!(s.skipped, 2);
        assert_eq!(s.dead.len(), 1);
        assert!(s.dead[0].reason.contains("generic model's name"));
        // The generic model still learns from every row but the impostor's.
        assert_eq!(s.users.last().map(|u| u.rows.len()), Some(5));
        let only = SplitConfig {
            only_users: vec!["alice".into()],
            include_generic: false,
            ..SplitConfig::default()
        };
        let s = split(rows(), &only, true, false, false);
        assert_eq!(users(&s), [("alice", 1, true, false, false)]);
    }

    #[test]
    fn a_load_only_epoch_feeds_the_training_history_and_a_payload_one_nothing() {
        let s = split(rows(), &SplitConfig::default(), false, false, false);
        assert!(
            s.users
                .iter()
                .all(|u| u.train && u.history_only && !u.infer)
        );
        assert_eq!(s.users.len(), 5);
        let s = split(rows(), &SplitConfig::default(), false, false, true);
        assert!(s.users.is_empty());
    }

    #[test]
    fn each_epoch_is_split_per_user_with_the_generic_user_getting_every_training_row() {
        let f = crate::testing::Fixture::duo(3, 2);
        let mut days = f.days();
        // Day 1 only scores: no generic rows.
        for rows in &mut days[1].1 {
            rows.tasks.train = false;
        }
        // One user is skipped: counted, in the generic rows, not its own.
        let skipped = days[0].1[0].rows[0].user.clone().unwrap();
        let of_skipped = |d: &[FileRows]| {
            d[0].rows
                .iter()
                .filter(|r| r.user.as_deref() == Some(skipped.as_str()))
                .count()
        };
        let counts: Vec<(usize, usize)> = days
            .iter()
            .map(|(_, d)| (d[0].rows.len(), of_skipped(d)))
            .collect();
        let cfg = SplitConfig {
            skip_users: vec![skipped.clone()],
            ..SplitConfig::default()
        };
        let (out, stats) = crate::testing::run_stage(days, move |s, stats| {
            crate::testing::both(s.split_users(cfg, stats))
        });
        assert_eq!(
            stats.skipped,
            counts.iter().map(|c| c.1 as u64).sum::<u64>()
        );
        for (epoch, (rows, skipped_rows)) in counts.iter().enumerate() {
            let users: Vec<&UserRows> = out
                .iter()
                .filter(|(t, _)| *t == epoch as u64)
                .filter_map(|(_, u)| u.as_ref().ok())
                .collect();
            let generic: Vec<&&UserRows> = users.iter().filter(|u| u.generic).collect();
            let own: usize = users
                .iter()
                .filter(|u| !u.generic)
                .map(|u| u.rows.len())
                .sum();
            assert_eq!(
                own,
                rows - skipped_rows,
                "epoch {epoch}: every row to its user once"
            );
            assert!(users.iter().all(|u| u.user != skipped || u.generic));
            if epoch == 0 {
                assert_eq!(generic.len(), 1);
                assert_eq!(generic[0].rows.len(), *rows);
                assert!(users.iter().all(|u| u.train && u.infer != u.generic));
            } else {
                assert!(generic.is_empty(), "a scoring epoch has no generic rows");
                assert!(users.iter().all(|u| u.infer && !u.train));
            }
        }
        assert!(out.iter().all(|(_, u)| u.is_ok()), "no dead letters");
    }
}
