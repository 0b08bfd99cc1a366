//! Shell integration: completion scripts (clap_complete) and man pages
//! (clap_mangen), both generated from the same command table as `--help`.
//!
//! Install (README "Using it"):
//! `eggs completions bash > ~/.local/share/bash-completion/completions/eggs`,
//! `eggs man --dir ~/.local/share/man/man1` (then `man eggs`, `man eggs-ls`).

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut command = crate::Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "eggs", &mut script);
    super::output::write_bytes(&script)
}

/// `eggs man`: eggs(1) on stdout; with `--dir`, eggs.1 and one
/// eggs-COMMAND.1 per command written there.
pub fn man(dir: Option<&Path>) -> anyhow::Result<()> {
    let command = crate::Cli::command();
    let Some(dir) = dir else {
        let mut page = Vec::new();
        clap_mangen::Man::new(command).render(&mut page)?;
        return super::output::write_bytes(&page);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    clap_mangen::generate_to(command, dir).with_context(|| format!("{}: cannot write the man pages", dir.display()))?;
    Ok(())
}
