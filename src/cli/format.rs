//! Text the subcommands share: the parameter line and table column widths.

/// The parameter line `train` and `inspect` both print.
///
/// The LoRA r=8 comparison is left out when no adapted module is a linear layer LoRA could
/// sit on (prompt/prefix tuning, full fine-tuning), where "0, 0.0x more" would mislead.
pub(super) fn params_line(adapter: usize, head: usize, modules: usize, lora_r8: usize) -> String {
    let noun = if modules == 1 { "module" } else { "modules" };
    let lora = if lora_r8 == 0 {
        String::new()
    } else {
        format!(
            "; LoRA r=8 on them: {lora_r8}, {:.1}x more",
            lora_r8 as f64 / adapter.max(1) as f64
        )
    };
    format!(
        "trainable parameters: {adapter} adapter + {head} head = {} ({modules} {noun}{lora})",
        adapter + head
    )
}

/// Width of a table column holding `cells`, at least as wide as its `header`.
pub(super) fn column_width<'a>(header: &str, cells: impl Iterator<Item = &'a str>) -> usize {
    let chars = |s: &str| s.chars().count();
    cells.map(chars).max().unwrap_or(0).max(chars(header))
}

#[cfg(test)]
mod tests {
    use super::params_line;

    #[test]
    fn params_line_compares_with_lora_only_where_lora_could_sit() {
        assert_eq!(
            params_line(1024, 99, 4, 2048),
            "trainable parameters: 1024 adapter + 99 head = 1123 (4 modules; LoRA r=8 on them: \
             2048, 2.0x more)"
        );
        assert_eq!(
            params_line(7680, 770, 1, 0),
            "trainable parameters: 7680 adapter + 770 head = 8450 (1 module)"
        );
    }
}
