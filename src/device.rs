//! Where models run: `--device cpu | cuda | cuda:K`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A compute device as named on the command line; turned into a candle device only by the stages that run models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => match other.strip_prefix("cuda:") {
                Some(k) => k.parse().map(Self::Cuda).map_err(|_| {
                    format!("bad CUDA ordinal in `{other}`: expected cuda:K with K a number")
                }),
                None => Err(format!(
                    "unknown device `{other}`: expected cpu, cuda or cuda:K"
                )),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(k) => write!(f, "cuda:{k}"),
        }
    }
}

impl DeviceSpec {
    /// The candle device. Asking for CUDA in a build without the `cuda` feature is an error that says so.
    pub fn candle(&self) -> candle_core::Result<candle_core::Device> {
        match self {
            Self::Cpu => Ok(candle_core::Device::Cpu),
            Self::Cuda(k) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(candle_core::Error::Msg(
                        "CUDA requested but this umrank was built without the `cuda` feature \
                         (cargo build --release --features cuda)"
                            .into(),
                    ));
                }
                candle_core::Device::new_cuda(*k)
            }
        }
    }
}

/// The family of CPU kernels candle's matrix products take on this machine: gemm picks AVX-512, AVX2 + FMA or
/// plain SIMD kernels at run time (pulp's x86-64 levels), and each sums in its own order. Work whose bits must
/// repeat (the embedding store) is keyed by it, so that machines of different kinds sharing a store never mix
/// their vectors.
pub fn cpu_kernels() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        let avx512 = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512cd")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512vl");
        if avx2 && avx512 {
            "x86-64-v4"
        } else if avx2 {
            "x86-64-v3"
        } else {
            "x86-64"
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        std::env::consts::ARCH
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert!("tpu".parse::<DeviceSpec>().is_err());
        assert_eq!(DeviceSpec::Cuda(1).to_string(), "cuda:1");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_kernel_family_follows_the_cpu_features() {
        let expected = if is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("fma") {
            "x86-64-v4"
        } else if is_x86_feature_detected!("avx2") {
            "x86-64-v3"
        } else {
            "x86-64"
        };
        assert_eq!(cpu_kernels(), expected);
    }
}
