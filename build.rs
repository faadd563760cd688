//! Compiles every kernels/*.cu to PTX with nvcc and embeds the text through OUT_DIR/kernels.rs.
//!
//! Two targets per kernel: compute_90 (Hopper; the driver JITs it to sm_90) and compute_80 (A100 and
//! anything newer that lacks the sm_90 path). Each kernel's sm_90 PTX is also assembled by ptxas with its
//! verbose report (OUT_DIR/<stem>.ptxas.txt, embedded as `kernels::PTXAS_SM90`); a register spill fails the
//! build. nvcc is looked up in $NVCC, $CUDA_HOME/bin, $CUDA_PATH/bin,
//! PATH, the cache tools/setup.sh fills ($MAPPA_HOME or ~/.cache/mappa) and /usr/local/cuda/bin.
//! Without nvcc the build prints a cargo warning and goes on CPU-only; REQUIRE_CUDA_KERNELS=1 (set by CI)
//! turns that into an error so a missing toolchain can never pass unnoticed.
use std::{env, fs, path::PathBuf, process::Command};

const TARGETS: [(&str, &str); 2] = [("sm90", "compute_90"), ("sm80", "compute_80")];

fn find_nvcc() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = env::var_os("NVCC") {
        candidates.push(p.into());
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(h) = env::var_os(var) {
            candidates.push(PathBuf::from(h).join("bin/nvcc"));
        }
    }
    if let Some(path) = env::var_os("PATH") {
        candidates.extend(env::split_paths(&path).map(|d| d.join("nvcc")));
    }
    let home = env::var_os("MAPPA_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/mappa")));
    if let Some(h) = home {
        candidates.push(h.join("nvcc-cu13.0/nvidia/cu13/bin/nvcc"));
    }
    candidates.push("/usr/local/cuda/bin/nvcc".into());
    candidates.into_iter().find(|p| p.is_file())
}

/// Assembles one kernel file's PTX for sm_90 with ptxas's verbose report, which lands in
/// OUT_DIR/<stem>.ptxas.txt; a register spill in any kernel fails the build (every kernel here is on a hot
/// path, and a spill is local-memory traffic on each call). The PTX stays what is embedded: the driver JITs
/// it, and this pass is the check that it assembles cleanly.
fn assemble(nvcc: &std::path::Path, ptx: &std::path::Path, stem: &str) {
    let ptxas = nvcc.with_file_name("ptxas");
    let o = Command::new(&ptxas)
        .args(["-arch=sm_90", "-O3", "-v", "-o", "/dev/null"])
        .arg(ptx)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", ptxas.display()));
    let report = String::from_utf8_lossy(&o.stderr).into_owned();
    let out = ptx.with_file_name(format!("{stem}.ptxas.txt"));
    fs::write(&out, &report).expect("write the ptxas report");
    if !o.status.success() {
        panic!("ptxas failed on kernels/{stem}.cu (sm_90):\n{report}");
    }
    let spills: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("spill stores") && !l.contains(" 0 bytes spill stores, 0 bytes spill loads"))
        .collect();
    if !spills.is_empty() {
        panic!("kernels/{stem}.cu spills registers on sm_90 (report: {}):\n{report}", out.display());
    }
}

fn main() {
    println!("cargo::rustc-check-cfg=cfg(has_cuda_kernels)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=kernels"); // any .cu or shared .cuh header inside
    for v in ["NVCC", "CUDA_HOME", "CUDA_PATH", "PATH", "MAPPA_HOME", "REQUIRE_CUDA_KERNELS"] {
        println!("cargo::rerun-if-env-changed={v}");
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut sources: Vec<PathBuf> = fs::read_dir("kernels")
        .expect("kernels/ directory")
        .map(|e| e.expect("readable kernels/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    sources.sort();

    let Some(nvcc) = find_nvcc() else {
        if env::var("REQUIRE_CUDA_KERNELS").is_ok_and(|v| v == "1") {
            panic!("REQUIRE_CUDA_KERNELS=1 but nvcc was not found (run tools/setup.sh, or set NVCC)");
        }
        println!("cargo::warning=nvcc not found: building without CUDA kernels (CPU backend only); run tools/setup.sh");
        return;
    };

    // One nvcc process per (kernel, target), in parallel: each takes about a second.
    std::thread::scope(|s| {
        let jobs: Vec<_> = sources
            .iter()
            .flat_map(|src| TARGETS.iter().map(move |t| (src, t)))
            .map(|(src, (tag, arch))| {
                let (nvcc, out) = (&nvcc, &out);
                s.spawn(move || {
                    let stem = src.file_stem().unwrap().to_str().unwrap();
                    let dst = out.join(format!("{stem}.{tag}.ptx"));
                    let o = Command::new(nvcc)
                        .args(["--ptx", "-O3", "-std=c++17", "-Ikernels", &format!("-arch={arch}"), "-o"])
                        .arg(&dst)
                        .arg(src)
                        .output()
                        .unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
                    if !o.status.success() {
                        panic!("nvcc failed on {} ({arch}):\n{}", src.display(), String::from_utf8_lossy(&o.stderr));
                    }
                    if *tag == "sm90" {
                        assemble(nvcc, &dst, stem);
                    }
                })
            })
            .collect();
        for j in jobs {
            j.join().expect("nvcc job");
        }
    });

    let mut rs = String::new();
    for (tag, _) in TARGETS {
        rs += &format!("pub const PTX_{}: &[(&str, &str)] = &[\n", tag.to_uppercase());
        for src in &sources {
            let stem = src.file_stem().unwrap().to_str().unwrap();
            rs += &format!("    ({stem:?}, include_str!(concat!(env!(\"OUT_DIR\"), \"/{stem}.{tag}.ptx\"))),\n");
        }
        rs += "];\n";
    }
    rs += "pub const PTXAS_SM90: &[(&str, &str)] = &[\n";
    for src in &sources {
        let stem = src.file_stem().unwrap().to_str().unwrap();
        rs += &format!("    ({stem:?}, include_str!(concat!(env!(\"OUT_DIR\"), \"/{stem}.ptxas.txt\"))),\n");
    }
    rs += "];\n";
    let version = Command::new(&nvcc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().last().map(str::to_owned))
        .unwrap_or_default();
    rs += &format!("pub const NVCC_VERSION: &str = {version:?};\n");
    fs::write(out.join("kernels.rs"), rs).expect("write kernels.rs");
    println!("cargo::rustc-cfg=has_cuda_kernels");
}
