//! The targets of the benchmark issue (BENCHMARKS.md, "Against the targets"), judged from a
//! run's rows: the first row of each scenario a target is about gets its verdict, and the
//! table ends with one line per target beside the floor the tool measured under it in the
//! same run. A target is judged only at its conditions (full sizes; `e2e` at half the send
//! rate measured in the run); a smoke run, or one at other sizes or rates, shows the figure
//! unjudged rather than a verdict that would not mean what the target says.

use serde::Serialize;

use crate::scenarios::Row;

/// A target as one row's figure answers it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Verdict {
    /// What the target asks, in words.
    pub goal: &'static str,
    /// The row's figure it is about (in the goal's unit).
    pub figure: f64,
    /// Met or not; none when the run was not at the target's conditions.
    pub met: Option<bool>,
    /// Why it was not judged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unjudged: Option<&'static str>,
}

/// What a run was, as far as the targets' conditions go.
#[derive(Debug, Clone, Copy)]
pub struct Conditions {
    /// A `--smoke` run: it proves the tool works and measures nothing.
    pub smoke: bool,
    /// Streams of `fanout` and `streams`.
    pub streams: usize,
    /// Events in `replay`'s log.
    pub replay_events: usize,
    /// Whether the first `e2e` rate was half the `unary-send` rate measured in this run.
    pub e2e_at_half_send_rate: bool,
}

/// One target: the rows it is about, how their figure is read, and what it asks of it.
struct Goal {
    scenarios: &'static [&'static str],
    goal: &'static str,
    figure: fn(&Row) -> Option<f64>,
    meets: fn(f64) -> bool,
    /// Whether the run was at the target's conditions, or why not.
    at_conditions: fn(&Conditions) -> Result<(), &'static str>,
    /// The row measured under it in the same run (the least any server could do), by the
    /// scenario it applies to.
    floor: fn(&str) -> Option<&'static str>,
}

/// Any run but a smoke run.
fn full(c: &Conditions) -> Result<(), &'static str> {
    if c.smoke { Err("a smoke run") } else { Ok(()) }
}

/// A full run with `ok`, else `why`.
fn full_and(c: &Conditions, ok: bool, why: &'static str) -> Result<(), &'static str> {
    full(c).and(if ok { Ok(()) } else { Err(why) })
}

/// `fanout` and `streams` are about 10,000 streams.
fn at_10_000_streams(c: &Conditions) -> Result<(), &'static str> {
    full_and(c, c.streams == 10_000, "not 10,000 streams")
}

/// A target with no floor measured under it.
fn no_floor(_: &str) -> Option<&'static str> {
    None
}

const GOALS: [Goal; 6] = [
    Goal {
        scenarios: &["unary-read", "unary-read/h2load"],
        goal: "throughput at least 0.8 of the ceiling",
        figure: |r| r.ratio,
        meets: |x| x >= 0.8,
        at_conditions: full,
        floor: no_floor,
    },
    Goal {
        scenarios: &["unary-send", "unary-send/h2load"],
        goal: "throughput at least 0.5 of the ceiling, every reply durable",
        figure: |r| r.ratio,
        meets: |x| x >= 0.5,
        at_conditions: full,
        floor: |s| match s {
            "unary-send" => Some("echo-durable"),
            _ => Some("echo-durable/h2load"),
        },
    },
    Goal {
        scenarios: &["e2e"],
        goal: "p99 at most 2 ms at half the max send rate",
        figure: |r| r.p99_ms,
        meets: |ms| ms <= 2.0,
        at_conditions: |c| {
            let half = c.e2e_at_half_send_rate;
            full_and(c, half, "not at half the send rate measured in the run")
        },
        floor: |_| Some("e2e-floor"),
    },
    Goal {
        scenarios: &["fanout"],
        goal: "all 10,000 streams have the event within 250 ms",
        figure: |r| r.max_ms,
        meets: |ms| ms <= 250.0,
        at_conditions: at_10_000_streams,
        floor: no_floor,
    },
    Goal {
        scenarios: &["streams"],
        goal: "at most 16 KiB of resident memory per idle stream at 10,000",
        figure: |r| r.kib_per_stream,
        meets: |kib| kib <= 16.0,
        at_conditions: at_10_000_streams,
        floor: no_floor,
    },
    Goal {
        scenarios: &["replay"],
        goal: "at least 200,000 events/s over a 100,000-event log",
        figure: |r| r.per_sec,
        meets: |per_sec| per_sec >= 200_000.0,
        at_conditions: |c| full_and(c, c.replay_events == 100_000, "not a 100,000-event log"),
        floor: no_floor,
    },
];

/// Each target with each scenario it is about, in the order the table lists them.
fn targeted() -> impl Iterator<Item = (&'static Goal, &'static str)> {
    GOALS
        .iter()
        .flat_map(|g| g.scenarios.iter().map(move |name| (g, *name)))
}

/// The first row of `scenario`: the one a target is about (a sweep's later rates are not).
fn first<'a>(rows: &'a [Row], scenario: &str) -> Option<&'a Row> {
    rows.iter().find(|r| r.scenario == scenario)
}

/// Gives the first row of each scenario a target is about its verdict.
pub fn judge(rows: &mut [Row], c: &Conditions) {
    for (g, name) in targeted() {
        let Some(row) = rows.iter_mut().find(|r| r.scenario == name) else {
            continue;
        };
        let at = (g.at_conditions)(c);
        row.target = (g.figure)(row).map(|figure| Verdict {
            goal: g.goal,
            figure,
            met: at.is_ok().then(|| (g.meets)(figure)),
            unjudged: at.err(),
        });
    }
}

/// One line per judged row, in the order of the targets: figure, verdict, and the floor's
/// figure where the run measured it.
pub fn lines(rows: &[Row]) -> Vec<String> {
    let mut out = Vec::new();
    for (g, name) in targeted() {
        let Some(v) = first(rows, name).and_then(|r| r.target) else {
            continue;
        };
        let verdict = match (v.met, v.unjudged) {
            (Some(true), _) => "met".to_string(),
            (Some(false), _) => "NOT MET".to_string(),
            (None, why) => format!("not judged: {}", why.unwrap_or("unknown conditions")),
        };
        let mut line = format!(
            "{name:<18} {:<62} {:>10}  {verdict}",
            v.goal,
            show(v.figure)
        );
        let floor = (g.floor)(name).and_then(|f| Some((f, (g.figure)(first(rows, f)?)?)));
        if let Some((f, figure)) = floor {
            line += &format!(" (floor: {f} {})", show(figure));
        }
        out.push(line);
    }
    out
}

/// A figure as the table shows it: ratios and milliseconds to three places, rates whole.
fn show(x: f64) -> String {
    if x >= 1_000.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, ratio: Option<f64>, p99_ms: Option<f64>) -> Row {
        let mut r = Row::figure(name, 1.0, None, String::new());
        (r.ratio, r.p99_ms) = (ratio, p99_ms);
        r
    }

    const FULL: Conditions = Conditions {
        smoke: false,
        streams: 10_000,
        replay_events: 100_000,
        e2e_at_half_send_rate: true,
    };

    #[test]
    fn each_target_is_judged_on_its_first_row_with_the_floor_beside_it() {
        let mut rows = vec![
            row("unary-read", Some(0.85), None),
            row("unary-send", Some(0.29), None),
            row("e2e", None, Some(11.8)),
            // A further e2e rate is not the target's.
            row("e2e", None, Some(1.2)),
            row("e2e-floor", None, Some(1.96)),
            row("echo-durable", Some(0.40), None),
        ];
        judge(&mut rows, &FULL);
        let met: Vec<_> = rows.iter().map(|r| r.target.and_then(|v| v.met)).collect();
        assert_eq!(
            met,
            [Some(true), Some(false), Some(false), None, None, None]
        );
        let lines = lines(&rows);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].starts_with("unary-read") && lines[0].ends_with(" met"));
        assert!(lines[1].contains("0.290") && lines[1].contains("NOT MET"));
        assert!(
            lines[1].ends_with("(floor: echo-durable 0.400)"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].ends_with("(floor: e2e-floor 1.960)"),
            "{}",
            lines[2]
        );
    }

    #[test]
    fn a_run_off_the_targets_conditions_shows_figures_unjudged() {
        let mut rows = vec![
            row("unary-read", Some(0.95), None),
            row("e2e", None, Some(0.9)),
        ];
        let smoke = Conditions {
            smoke: true,
            ..FULL
        };
        judge(&mut rows, &smoke);
        assert!(
            rows.iter()
                .all(|r| r.target.is_some_and(|v| v.met.is_none()))
        );
        assert!(
            lines(&rows)
                .iter()
                .all(|l| l.contains("not judged: a smoke run"))
        );

        // e2e at a rate given by hand is not at half the send rate: its figure stays unjudged.
        let mut rows = vec![
            row("e2e", None, Some(0.9)),
            row("unary-read", Some(0.95), None),
        ];
        let by_hand = Conditions {
            e2e_at_half_send_rate: false,
            ..FULL
        };
        judge(&mut rows, &by_hand);
        let met: Vec<_> = rows.iter().map(|r| r.target.and_then(|v| v.met)).collect();
        assert_eq!(met, [None, Some(true)]);
        let said = rows[0].target.and_then(|v| v.unjudged);
        assert_eq!(said, Some("not at half the send rate measured in the run"));
    }
}
