//! Log set-up: every line on stderr, tagged with the process (and shard),
//! filtered by `RUST_LOG` (default `info`), coloured only on a terminal.
//!
//! The tag matters where several daemons share one stderr (`eggs
//! local-cluster`, a test) or one journal: `[metad shard=3] … INFO …`.

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Who is logging: the process name and, for a shard, its number.
#[derive(Clone, Debug)]
pub struct Tag {
    pub process: &'static str,
    pub shard: Option<u8>,
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.shard {
            Some(shard) => write!(f, "[{} shard={shard}]", self.process),
            None => write!(f, "[{}]", self.process),
        }
    }
}

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init(tag: Tag) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let format = Tagged { tag: tag.to_string(), inner: format::Format::default() };
    // A second init (only in tests that call it twice) keeps the first.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only for a person watching a terminal, not in log files.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .event_format(format)
        .try_init();
}

/// The default line format with the tag in front.
struct Tagged<F> {
    tag: String,
    inner: F,
}

impl<S, N, F> FormatEvent<S, N> for Tagged<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: format::Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "{} ", self.tag)?;
        self.inner.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_name_the_process_and_the_shard() {
        assert_eq!(Tag { process: "metad", shard: Some(3) }.to_string(), "[metad shard=3]");
        assert_eq!(Tag { process: "blockd", shard: None }.to_string(), "[blockd]");
    }
}
