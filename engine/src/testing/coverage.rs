//! Rego line coverage, merged over tests, in OPA's report shape.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value as Json, json};

/// One file's lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileCoverage {
    pub file: String,
    /// Lines with an expression that was evaluated.
    pub covered: BTreeSet<u32>,
    /// Lines with expressions, none of which was evaluated.
    pub not_covered: BTreeSet<u32>,
}

impl FileCoverage {
    /// Percentage of lines covered; 100 for a file with no lines that count.
    pub fn percent(&self) -> f64 {
        percent(self.covered.len(), self.not_covered.len())
    }
}

fn percent(covered: usize, not_covered: usize) -> f64 {
    let total = covered + not_covered;
    if total == 0 {
        100.0
    } else {
        covered as f64 * 100.0 / total as f64
    }
}

/// Coverage of every Rego file loaded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CoverageReport {
    pub files: Vec<FileCoverage>,
}

/// Accumulates regorus's per-evaluation reports.
#[derive(Debug, Default)]
pub(crate) struct CoverageAccumulator {
    files: BTreeMap<String, (BTreeSet<u32>, BTreeSet<u32>)>,
}

impl CoverageAccumulator {
    pub(crate) fn add(&mut self, report: &regorus::coverage::Report) {
        for f in &report.files {
            let entry = self.files.entry(f.path.clone()).or_default();
            entry.0.extend(f.covered.iter().copied());
            entry.1.extend(f.not_covered.iter().copied());
        }
    }

    /// A line is covered when any evaluation covered it.
    pub(crate) fn finish(self) -> CoverageReport {
        CoverageReport {
            files: self
                .files
                .into_iter()
                .map(|(file, (covered, seen))| FileCoverage {
                    not_covered: seen.difference(&covered).copied().collect(),
                    covered,
                    file,
                })
                .collect(),
        }
    }
}

/// Consecutive lines as `(first, last)` ranges.
pub fn ranges(lines: &BTreeSet<u32>) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &l in lines {
        match out.last_mut() {
            Some((_, end)) if *end + 1 == l => *end = l,
            _ => out.push((l, l)),
        }
    }
    out
}

impl CoverageReport {
    pub fn covered_lines(&self) -> usize {
        self.files.iter().map(|f| f.covered.len()).sum()
    }

    pub fn not_covered_lines(&self) -> usize {
        self.files.iter().map(|f| f.not_covered.len()).sum()
    }

    /// Percentage over all files.
    pub fn percent(&self) -> f64 {
        percent(self.covered_lines(), self.not_covered_lines())
    }

    /// OPA's `opa test --coverage` JSON: `files.{file}.{covered, not_covered}` as row ranges,
    /// line counts and percentages per file and overall.
    pub fn to_opa_json(&self) -> Json {
        let range_list = |set: &BTreeSet<u32>| -> Json {
            Json::Array(
                ranges(set)
                    .into_iter()
                    .map(|(a, b)| json!({"start": {"row": a}, "end": {"row": b}}))
                    .collect(),
            )
        };
        let mut files = serde_json::Map::new();
        for f in &self.files {
            let mut o = serde_json::Map::new();
            if !f.covered.is_empty() {
                o.insert("covered".into(), range_list(&f.covered));
            }
            if !f.not_covered.is_empty() {
                o.insert("not_covered".into(), range_list(&f.not_covered));
            }
            o.insert("covered_lines".into(), json!(f.covered.len()));
            o.insert("not_covered_lines".into(), json!(f.not_covered.len()));
            o.insert("coverage".into(), round2(f.percent()));
            files.insert(f.file.clone(), Json::Object(o));
        }
        json!({
            "files": files,
            "covered_lines": self.covered_lines(),
            "not_covered_lines": self.not_covered_lines(),
            "coverage": round2(self.percent()),
        })
    }
}

/// A percentage to two decimals, as Go's JSON writes it: `50`, not `50.0`.
fn round2(x: f64) -> Json {
    let r = (x * 100.0).round() / 100.0;
    if r.fract() == 0.0 && r.abs() < 1e15 {
        #[expect(clippy::cast_possible_truncation, reason = "a whole percentage")]
        let whole = r as i64;
        json!(whole)
    } else {
        json!(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_group_consecutive_lines() {
        let s: BTreeSet<u32> = [3, 4, 7, 9, 10, 11].into_iter().collect();
        assert_eq!(ranges(&s), vec![(3, 4), (7, 7), (9, 11)]);
        assert!(ranges(&BTreeSet::new()).is_empty());
    }

    #[test]
    fn a_line_covered_once_is_covered() {
        let mut acc = CoverageAccumulator::default();
        let mut a = regorus::coverage::Report::default();
        a.files.push(regorus::coverage::File {
            path: "p.rego".into(),
            code: String::new(),
            covered: [3].into_iter().collect(),
            not_covered: [4, 5].into_iter().collect(),
        });
        let mut b = regorus::coverage::Report::default();
        b.files.push(regorus::coverage::File {
            path: "p.rego".into(),
            code: String::new(),
            covered: [4].into_iter().collect(),
            not_covered: [3, 5].into_iter().collect(),
        });
        acc.add(&a);
        acc.add(&b);
        let r = acc.finish();
        assert_eq!(r.files[0].covered, [3, 4].into_iter().collect());
        assert_eq!(r.files[0].not_covered, [5].into_iter().collect());
        assert!((r.percent() - 66.666).abs() < 0.01);
        assert_eq!(r.to_opa_json()["coverage"], json!(66.67));
    }
}
