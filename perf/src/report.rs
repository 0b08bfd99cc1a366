//! The result table: one row per figure, with the limit it is compared to,
//! and its Markdown, CSV and terminal forms.

use std::fmt::Write as _;

/// How a ratio is shown and judged.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Target {
    /// No target: the row is informative.
    None,
    /// eggsfs / limit ≥ this fraction (shown in %).
    RatioAtLeast(f64),
    /// eggsfs / limit ≥ this factor (shown as ×).
    TimesAtLeast(f64),
    /// eggsfs ≥ this absolute value (in the row's unit).
    AtLeast(f64),
    /// eggsfs ≤ this absolute value (in the row's unit).
    AtMost(f64),
}

/// One row.
#[derive(Clone, Debug)]
pub struct Row {
    pub figure: String,
    pub unit: &'static str,
    /// `None` for rows that only state a machine limit.
    pub eggsfs: Option<Result<f64, String>>,
    pub limit: Option<Result<f64, String>>,
    pub target: Target,
}

impl Row {
    /// A machine limit (no eggsfs figure).
    pub fn limit(figure: impl Into<String>, unit: &'static str, value: Result<f64, String>) -> Self {
        Self { figure: figure.into(), unit, eggsfs: None, limit: Some(value), target: Target::None }
    }

    /// An eggsfs figure against a limit.
    pub fn against(
        figure: impl Into<String>,
        unit: &'static str,
        value: Result<f64, String>,
        limit: Option<Result<f64, String>>,
        target: Target,
    ) -> Self {
        Self { figure: figure.into(), unit, eggsfs: Some(value), limit, target }
    }

    pub fn ratio(&self) -> Option<f64> {
        match (&self.eggsfs, &self.limit) {
            (Some(Ok(value)), Some(Ok(limit))) if *limit > 0.0 => Some(value / limit),
            _ => None,
        }
    }

    /// Whether the target is met; `None` without a target or a figure.
    pub fn met(&self) -> Option<bool> {
        let value = match &self.eggsfs {
            Some(Ok(value)) => *value,
            _ => return None,
        };
        match self.target {
            Target::None => None,
            Target::RatioAtLeast(min) | Target::TimesAtLeast(min) => self.ratio().map(|ratio| ratio >= min),
            Target::AtLeast(min) => Some(value >= min),
            Target::AtMost(max) => Some(value <= max),
        }
    }

    /// Why a figure or its limit is missing, if it is.
    pub fn missing(&self) -> Option<&str> {
        match (&self.eggsfs, &self.limit) {
            (Some(Err(why)), _) | (_, Some(Err(why))) => Some(why),
            _ => None,
        }
    }

    fn ratio_text(&self) -> String {
        match (self.ratio(), self.target) {
            (Some(ratio), Target::TimesAtLeast(_)) => format!("{ratio:.1}×"),
            (Some(ratio), _) => format!("{:.0} %", ratio * 100.0),
            (None, _) => String::new(),
        }
    }

    fn target_text(&self) -> String {
        let goal = match self.target {
            Target::None => return String::new(),
            Target::RatioAtLeast(min) => format!("≥ {:.0} % of limit", min * 100.0),
            Target::TimesAtLeast(min) => format!("≥ {min:.0}× limit"),
            Target::AtLeast(min) => format!("≥ {} {}", human(min), self.unit),
            Target::AtMost(max) => format!("≤ {} {}", human(max), self.unit),
        };
        match self.met() {
            Some(true) => format!("{goal}: met"),
            Some(false) => format!("{goal}: MISSED"),
            None => goal,
        }
    }
}

fn cell(value: &Option<Result<f64, String>>, unit: &str) -> String {
    match value {
        None => String::new(),
        Some(Ok(value)) => format!("{} {unit}", human(*value)),
        Some(Err(_)) => "not measured".to_string(),
    }
}

/// Three significant digits, thousands separated by a thin space.
pub fn human(value: f64) -> String {
    if value >= 1000.0 {
        let digits = format!("{:.0}", round_significant(value, 3));
        let mut out = String::new();
        for (i, ch) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push('\u{2009}');
            }
            out.push(ch);
        }
        out
    } else if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn round_significant(value: f64, digits: i32) -> f64 {
    if value == 0.0 {
        return 0.0;
    }
    let magnitude = value.abs().log10().floor() as i32;
    let scale = 10f64.powi(digits - 1 - magnitude);
    (value * scale).round() / scale
}

/// The whole run's results.
#[derive(Default, Debug)]
pub struct Report {
    pub rows: Vec<Row>,
}

impl Report {
    pub fn push(&mut self, row: Row) {
        self.rows.push(row);
    }

    /// Rows with a figure or limit that could not be measured.
    pub fn missing(&self) -> Vec<(&str, &str)> {
        self.rows.iter().filter_map(|row| row.missing().map(|why| (row.figure.as_str(), why))).collect()
    }

    pub fn markdown_table(&self) -> String {
        let mut out = String::from("| figure | eggsfs | limit | ratio | target |\n|---|---:|---:|---:|---|\n");
        for row in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                row.figure,
                cell(&row.eggsfs, row.unit),
                cell(&row.limit, row.unit),
                row.ratio_text(),
                row.target_text()
            );
        }
        out
    }

    /// Aligned plain text for the terminal.
    pub fn text_table(&self) -> String {
        let header = ["figure", "eggsfs", "limit", "ratio", "target"];
        let lines: Vec<[String; 5]> = self
            .rows
            .iter()
            .map(|row| {
                [
                    row.figure.clone(),
                    cell(&row.eggsfs, row.unit),
                    cell(&row.limit, row.unit),
                    row.ratio_text(),
                    row.target_text(),
                ]
            })
            .collect();
        let mut widths = header.map(|h| h.chars().count());
        for line in &lines {
            for (width, text) in widths.iter_mut().zip(line) {
                *width = (*width).max(text.chars().count());
            }
        }
        let mut out = String::new();
        let mut put = |cells: [&str; 5]| {
            for (i, (text, width)) in cells.iter().zip(widths).enumerate() {
                let pad = width - text.chars().count();
                // Numbers right-aligned, words left-aligned.
                if (1..=3).contains(&i) {
                    let _ = write!(out, "{}{}  ", " ".repeat(pad), text);
                } else {
                    let _ = write!(out, "{}{}  ", text, " ".repeat(pad));
                }
            }
            out.truncate(out.trim_end().len());
            out.push('\n');
        };
        put(header);
        for line in &lines {
            put([&line[0], &line[1], &line[2], &line[3], &line[4]]);
        }
        out
    }

    pub fn csv(&self) -> String {
        let mut out = String::from("figure,unit,eggsfs,limit,ratio,target,met,not_measured_because\n");
        let number = |value: &Option<Result<f64, String>>| match value {
            Some(Ok(value)) => format!("{value:.3}"),
            _ => String::new(),
        };
        for row in &self.rows {
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{}",
                csv_field(&row.figure),
                row.unit,
                number(&row.eggsfs),
                number(&row.limit),
                row.ratio().map(|r| format!("{r:.4}")).unwrap_or_default(),
                csv_field(&row.target_text()),
                row.met().map(|m| m.to_string()).unwrap_or_default(),
                csv_field(row.missing().unwrap_or("")),
            );
        }
        out
    }
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) { format!("\"{}\"", text.replace('"', "\"\"")) } else { text.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_and_target() {
        let row = Row::against("cat", "MB/s", Ok(600.0), Some(Ok(1000.0)), Target::RatioAtLeast(0.6));
        assert_eq!(row.ratio(), Some(0.6));
        assert_eq!(row.met(), Some(true));
        let row = Row::against("cat", "MB/s", Ok(500.0), Some(Ok(1000.0)), Target::RatioAtLeast(0.6));
        assert_eq!(row.met(), Some(false));
        let row = Row::against("ready", "s", Ok(3.0), None, Target::AtMost(2.0));
        assert_eq!(row.met(), Some(false));
    }

    #[test]
    fn missing_figures_are_reported() {
        let mut report = Report::default();
        report.push(Row::limit("tcp", "MB/s", Ok(1.0)));
        report.push(Row::against("put", "MB/s", Err("eggs: not implemented yet".into()), Some(Ok(1.0)), Target::None));
        assert_eq!(report.missing(), vec![("put", "eggs: not implemented yet")]);
        assert!(report.csv().contains("not implemented yet"));
        assert!(report.markdown_table().contains("not measured"));
    }

    #[test]
    fn human_numbers() {
        assert_eq!(human(123_456.0), "123\u{2009}000");
        assert_eq!(human(12.345), "12.3");
        assert_eq!(human(0.5), "0.50");
    }

    #[test]
    fn csv_quotes() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("plain"), "plain");
    }
}
