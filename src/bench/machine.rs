//! The CPU a benchmark ran on, recorded in every row: a ratio measured on one CPU kind says
//! nothing about another (issue 21), so rows are grouped by it.

use serde::Serialize;

/// Instruction-set extensions that change which kernels a matmul or an elementwise loop can
/// use, in the order they are listed (x86 names as Linux writes them; Arm's `asimd`, `sve`).
const FEATURES_THAT_MATTER: &[&str] = &[
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "asimdhp",
    "sve",
    "sve2",
    "i8mm",
    "bf16",
];

/// The CPU as a benchmark row records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cpu {
    /// The model name the OS reports (`lscpu`'s "Model name").
    pub model: String,
    /// Logical CPUs this process may use (what the thread pools size themselves by).
    pub threads: usize,
    /// Its vector extensions among those that change kernels (AVX2, AVX-512, AMX, SVE…).
    pub features: Vec<String>,
}

impl Cpu {
    /// This machine's CPU (from `/proc/cpuinfo` on Linux; the model "unknown" elsewhere).
    pub fn detect() -> Self {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::from_cpuinfo(&info, threads)
    }

    /// Parses `/proc/cpuinfo` text (x86: `model name`, `cpu family`, `model` and `flags`;
    /// Arm: `Features`, the model from `CPU part` when there is no name).
    pub fn from_cpuinfo(info: &str, threads: usize) -> Self {
        let field = |key: &str| {
            info.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == key).then(|| v.trim().to_string())
            })
        };
        let mut model = field("model name")
            .or_else(|| field("CPU part").map(|p| format!("Arm CPU part {p}")))
            .unwrap_or_else(|| "unknown".into());
        // Virtual machines often report a bare "AMD EPYC": the family and model tell the
        // generations apart (25/1 is Zen 3, 25/17 Zen 4).
        if let (Some(family), Some(number)) = (field("cpu family"), field("model")) {
            model = format!("{model} (family {family}, model {number})");
        }
        let flags = field("flags")
            .or_else(|| field("Features"))
            .unwrap_or_default();
        let have: Vec<&str> = flags.split_whitespace().collect();
        let features = FEATURES_THAT_MATTER
            .iter()
            .filter(|f| have.contains(f))
            .map(|f| (*f).to_string())
            .collect();
        Self {
            model,
            threads,
            features,
        }
    }

    /// One line naming the kind: model, threads, the widest vector extensions.
    pub fn kind(&self) -> String {
        format!(
            "{}, {} threads, {}",
            self.model,
            self.threads,
            if self.features.is_empty() {
                "no listed vector extensions".into()
            } else {
                self.features.join(" ")
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuinfo_names_the_model_and_the_extensions_that_matter() {
        let amd = "processor\t: 0\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\n\
                   flags\t\t: fpu sse2 avx fma f16c avx2 sha_ni\nprocessor\t: 1\n";
        let cpu = Cpu::from_cpuinfo(amd, 2);
        assert_eq!(cpu.model, "AMD EPYC (family 25, model 1)");
        assert_eq!(cpu.features, ["avx", "avx2", "fma", "f16c"]);
        assert_eq!(
            cpu.kind(),
            "AMD EPYC (family 25, model 1), 2 threads, avx avx2 fma f16c"
        );
        let intel = "model name\t: Intel(R) Xeon(R) Platinum 8481C\nflags\t: avx2 avx512f \
                     avx512_bf16 amx_tile amx_bf16\n";
        let cpu = Cpu::from_cpuinfo(intel, 2);
        assert_eq!(
            cpu.features,
            ["avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"]
        );
        let arm = "Features\t: fp asimd asimdhp sve\nCPU part\t: 0xd40\n";
        let cpu = Cpu::from_cpuinfo(arm, 4);
        assert_eq!(
            (cpu.model.as_str(), cpu.features.len()),
            ("Arm CPU part 0xd40", 3)
        );
        assert_eq!(Cpu::from_cpuinfo("", 1).model, "unknown");
    }
}
