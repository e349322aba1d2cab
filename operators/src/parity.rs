//! Alert-rate parity across groups (`[parity] group = "COLUMN"`): each epoch, every scored row
//! counts in the group of its value of that column (any input column of the source schema: a
//! country, a department, an app); a row alerts when the run's detection rule flags it. Each
//! group's alert rate is set against the epoch's overall rate, and a group whose ratio falls
//! outside the band (`[parity] band`: 0.8, the four-fifths rule, and its inverse 1.25 for a
//! group alerted on too often) is flagged, once it has `min_rows` rows in the epoch.
//!
//! Output: `dfp_parity_{source}.csv`, one line per epoch and group and one `(all)` line per
//! epoch (the file is sorted like every output, so `(all)` comes first): `epoch, group_field, group, rows, alerts, alert_rate, overall_rate, ratio, flagged`.
//! Counts are summed per batch on each worker, then per epoch on worker 0 once the frontier has
//! passed it, so the file does not depend on the number of workers. An epoch's counts live
//! only until it closes: a resumed stream replays the epochs after its cut, so parity needs no
//! checkpointed state.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::operator::Operator;

use crate::config::ParityConfig;
use crate::filter_detections::Rule;
use crate::frontier::Pending;
use crate::inference::Scored;
use crate::metrics::SharedStats;
use crate::serialize::{Columns, Line, OutKind, csv_line};

/// The header of `dfp_parity_{source}.csv`.
pub const HEADER: &str =
    "epoch,group_field,group,rows,alerts,alert_rate,overall_rate,ratio,flagged";

/// The group name of rows whose value is empty or missing.
pub const MISSING: &str = "(missing)";

/// One group's rows and alerts (in a batch, or an epoch).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Count {
    /// The group (the column's value).
    pub group: String,
    /// Rows scored.
    pub rows: u64,
    /// Rows the rule flags.
    pub alerts: u64,
}

/// One line of the parity file.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupRate {
    /// The group (`(all)` for the epoch's overall line).
    pub group: String,
    /// Rows scored.
    pub rows: u64,
    /// Rows flagged.
    pub alerts: u64,
    /// alerts / rows.
    pub rate: f64,
    /// rate / the overall rate (None when nothing alerted overall).
    pub ratio: Option<f64>,
    /// Outside the band, with enough rows.
    pub flagged: bool,
}

/// The rates of an epoch's groups (by group name), then the overall line.
pub fn rates(counts: &BTreeMap<String, (u64, u64)>, cfg: &ParityConfig) -> Vec<GroupRate> {
    let (rows, alerts) = counts
        .values()
        .fold((0, 0), |(r, a), &(gr, ga)| (r + gr, a + ga));
    let rate = |a: u64, r: u64| if r == 0 { 0.0 } else { a as f64 / r as f64 };
    let overall = rate(alerts, rows);
    let mut out: Vec<GroupRate> = counts
        .iter()
        .map(|(group, &(r, a))| {
            let ratio = (overall > 0.0).then(|| rate(a, r) / overall);
            let outside = ratio.is_some_and(|x| x < cfg.band || x > 1.0 / cfg.band);
            GroupRate {
                group: group.clone(),
                rows: r,
                alerts: a,
                rate: rate(a, r),
                ratio,
                flagged: outside && r >= cfg.min_rows,
            }
        })
        .collect();
    out.push(GroupRate {
        group: "(all)".to_string(),
        rows,
        alerts,
        rate: overall,
        ratio: (overall > 0.0).then_some(1.0),
        flagged: false,
    });
    out
}

fn line(epoch: u64, field: &str, g: &GroupRate, overall: f64) -> Line {
    let cells = [
        epoch.to_string(),
        field.to_string(),
        g.group.clone(),
        g.rows.to_string(),
        g.alerts.to_string(),
        format!("{:.6}", g.rate),
        format!("{overall:.6}"),
        g.ratio.map_or_else(String::new, |r| format!("{r:.4}")),
        g.flagged.to_string(),
    ];
    Line::unkeyed(OutKind::Parity, csv_line(&cells))
}

/// The parity stage as a timely operator.
pub trait Parity<'s> {
    /// Each epoch's parity lines, on worker 0, once the epoch is complete.
    fn parity(
        self,
        cfg: &ParityConfig,
        columns: Arc<Columns>,
        rule: Rule,
        stats: SharedStats,
    ) -> StreamVec<'s, u64, Line>;
}

impl<'s> Parity<'s> for StreamVec<'s, u64, Scored> {
    fn parity(
        self,
        cfg: &ParityConfig,
        columns: Arc<Columns>,
        rule: Rule,
        stats: SharedStats,
    ) -> StreamVec<'s, u64, Line> {
        let field = cfg.group.clone().unwrap_or_default();
        let column = field.clone();
        let cfg = cfg.clone();
        // Per batch on each worker: one count per group.
        let counts = self.unary(Pipeline, "ParityCount", move |_cap, _info| {
            move |input, output| {
                input.for_each(|cap, data| {
                    let mut groups: HashMap<String, Count> = HashMap::new();
                    for s in data.iter() {
                        let value = columns
                            .value_of(&s.row, &column)
                            .filter(|v| !v.is_empty())
                            .unwrap_or_else(|| MISSING.to_string());
                        let c = groups.entry(value).or_insert_with_key(|g| Count {
                            group: g.clone(),
                            ..Count::default()
                        });
                        c.rows += 1;
                        c.alerts += u64::from(rule.is_detection(s));
                    }
                    output.session(&cap).give_iterator(groups.into_values());
                });
            }
        });
        // Per epoch on worker 0, once complete.
        counts.unary_frontier(
            Exchange::new(|_: &Count| 0),
            "Parity",
            move |_cap, _info| {
                let mut pending = Pending::<Count>::default();
                move |(input, frontier), output| {
                    input.for_each_stamp(|cap, data| pending.stash(cap, data, 0));
                    for (cap, counts) in pending.ready(&[frontier]) {
                        let mut epoch: BTreeMap<String, (u64, u64)> = BTreeMap::new();
                        for c in counts {
                            let e = epoch.entry(c.group).or_default();
                            e.0 += c.rows;
                            e.1 += c.alerts;
                        }
                        let rates = rates(&epoch, &cfg);
                        let overall = rates.last().map_or(0.0, |g| g.rate);
                        let flagged = rates.iter().filter(|g| g.flagged).count();
                        stats.borrow_mut().parity_breaches += flagged as u64;
                        let t = *cap.time();
                        output
                            .session(&cap)
                            .give_iterator(rates.iter().map(|g| line(t, &field, g, overall)));
                    }
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serialize::csv_cells;

    #[test]
    fn groups_outside_the_four_fifths_band_are_flagged_when_big_enough() {
        let cfg = ParityConfig {
            group: Some("country".into()),
            band: 0.8,
            min_rows: 30,
        };
        let counts = BTreeMap::from([
            ("FR".to_string(), (100, 14)), // 14%: near the overall 15.2%
            ("DE".to_string(), (100, 5)),  // 5%: a third of it
            ("US".to_string(), (200, 40)), // 20%: 1.32 times
            ("JP".to_string(), (10, 5)),   // 50%, but 10 rows: reported only
            ("IT".to_string(), (90, 12)),  // 13.3%: within the band
        ]);
        let got = rates(&counts, &cfg);
        let by: BTreeMap<&str, &GroupRate> = got.iter().map(|g| (g.group.as_str(), g)).collect();
        let all = by["(all)"];
        assert_eq!((all.rows, all.alerts), (500, 76));
        assert!((all.rate - 0.152).abs() < 1e-12);
        assert!(by["DE"].flagged && by["US"].flagged);
        assert!(!by["JP"].flagged && by["JP"].ratio.unwrap() > 3.0);
        assert!(!by["IT"].flagged && !by["FR"].flagged && !all.flagged);
        assert!((by["US"].ratio.unwrap() - 0.2 / 0.152).abs() < 1e-12);
        let text = line(3, "country", by["US"], all.rate).text;
        assert_eq!(text, "3,country,US,200,40,0.200000,0.152000,1.3158,true");
        let quoted = GroupRate {
            group: "Paris, FR".into(),
            ..by["US"].clone()
        };
        let cells = csv_cells(&line(3, "location", &quoted, all.rate).text, HEADER).unwrap();
        assert_eq!(
            (cells[2].as_str(), cells[8].as_str()),
            ("Paris, FR", "true")
        );
        assert_eq!(csv_cells("not,a,parity,line", HEADER), None);
    }

    #[test]
    fn an_epoch_without_alerts_has_no_ratios_and_flags_nothing() {
        let cfg = ParityConfig::default();
        let counts = BTreeMap::from([("a".to_string(), (100, 0)), ("b".to_string(), (50, 0))]);
        let got = rates(&counts, &cfg);
        assert!(got.iter().all(|g| g.ratio.is_none() && !g.flagged));
    }
}
