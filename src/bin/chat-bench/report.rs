//! The report: one row per figure, printed as it is measured, and with
//! `--repeat N` the median of each figure over the runs (a shared, noisy
//! machine moves single figures by a third from one run to the next).

use std::collections::BTreeMap;

/// One row of the report.
#[derive(Clone)]
pub struct Row {
    pub scenario: u32,
    pub case: String,
    pub figure: String,
    pub value: f64,
    pub unit: &'static str,
    pub ceiling: Option<f64>,
    /// The ratio to show, when it is not value ÷ ceiling (a median of ratios).
    pub ratio: Option<f64>,
    /// The target, as text, and whether it was met.
    pub target: Option<(String, bool)>,
    pub extra: BTreeMap<&'static str, f64>,
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        self.ratio.or(self.ceiling.map(|c| self.value / c))
    }

    fn key(&self) -> (u32, &str, &str) {
        (self.scenario, &self.case, &self.figure)
    }

    fn print(&self) {
        let ratio = match (self.ratio(), self.ceiling) {
            (Some(r), Some(c)) => format!("{r:.2}x of {}", fmt_num(c)),
            _ => String::new(),
        };
        let target = self
            .target
            .as_ref()
            .map(|(t, met)| format!("{t} {}", if *met { "MET" } else { "MISSED" }))
            .unwrap_or_default();
        println!(
            "{:>2}  {:<38} {:<22} {:>12} {:<6} {:<26} {}",
            self.scenario,
            self.case,
            self.figure,
            fmt_num(self.value),
            self.unit,
            ratio,
            target
        );
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "scenario": self.scenario, "case": self.case, "figure": self.figure, "value": self.value,
            "unit": self.unit, "ceiling": self.ceiling, "ratio": self.ratio(),
            "target": self.target.as_ref().map(|t| &t.0), "met": self.target.as_ref().map(|t| t.1),
            "extra": self.extra,
        })
    }
}

#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
}

pub fn print_header() {
    println!(
        "{:>2}  {:<38} {:<22} {:>12} {:<6} {:<26} target",
        "#", "case", "figure", "value", "unit", "vs ceiling"
    );
}

impl Report {
    /// Adds a row and prints it.
    pub fn add(&mut self, row: Row) {
        row.print();
        self.rows.push(row);
    }

    pub fn rows_json(&self) -> serde_json::Value {
        self.rows.iter().map(Row::json).collect()
    }

    /// Each figure's median over `runs`, in the order of the first run in
    /// which it appears: the median value, ceiling and ratio (the ratio of
    /// each run is taken first, against its own ceiling), and a target met
    /// when it was met in most runs.
    pub fn median(runs: &[Report]) -> Report {
        let mut order: Vec<&Row> = Vec::new();
        for row in runs.iter().flat_map(|r| &r.rows) {
            if !order.iter().any(|o| o.key() == row.key()) {
                order.push(row);
            }
        }
        let rows = order
            .into_iter()
            .map(|first| {
                let same: Vec<&Row> = runs
                    .iter()
                    .flat_map(|r| &r.rows)
                    .filter(|r| r.key() == first.key())
                    .collect();
                let med =
                    |f: &dyn Fn(&Row) -> Option<f64>| median(same.iter().filter_map(|r| f(r)));
                let mut extra = BTreeMap::new();
                for name in first.extra.keys() {
                    if let Some(v) = med(&|r| r.extra.get(name).copied()) {
                        extra.insert(*name, v);
                    }
                }
                extra.insert("runs", same.len() as f64);
                let met = same
                    .iter()
                    .filter(|r| r.target.as_ref().is_some_and(|t| t.1))
                    .count();
                Row {
                    value: med(&|r| Some(r.value)).unwrap_or(first.value),
                    ceiling: med(&|r| r.ceiling),
                    ratio: med(&|r| r.ratio()),
                    target: first
                        .target
                        .as_ref()
                        .map(|(t, _)| (t.clone(), 2 * met > same.len())),
                    extra,
                    ..first.clone()
                }
            })
            .collect();
        Report { rows }
    }

    pub fn print(&self) {
        print_header();
        for row in &self.rows {
            row.print();
        }
    }
}

/// The median (the mean of the middle two for an even count).
fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

pub fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

pub fn row(
    scenario: u32,
    case: impl Into<String>,
    figure: impl Into<String>,
    value: f64,
    unit: &'static str,
) -> Row {
    Row {
        scenario,
        case: case.into(),
        figure: figure.into(),
        value,
        unit,
        ceiling: None,
        ratio: None,
        target: None,
        extra: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(value: f64, ceiling: f64, met: bool) -> Report {
        let mut r = row(1, "Send", "msgs/s", value, "msgs/s");
        r.ceiling = Some(ceiling);
        r.target = Some(("ratio >= 0.5".into(), met));
        Report { rows: vec![r] }
    }

    #[test]
    fn the_median_takes_each_runs_ratio_against_its_own_ceiling_and_the_majority_target() {
        let runs = [
            run(10.0, 40.0, false),
            run(30.0, 50.0, true),
            run(20.0, 30.0, true),
        ];
        let m = Report::median(&runs);
        let r = &m.rows[0];
        assert_eq!(r.value, 20.0);
        assert_eq!(r.ceiling, Some(40.0));
        // Ratios 0.25, 0.6, 0.667: the median is the second run's.
        assert_eq!(r.ratio(), Some(0.6));
        assert!(r.target.as_ref().unwrap().1);
        assert_eq!(r.extra["runs"], 3.0);
    }
}
