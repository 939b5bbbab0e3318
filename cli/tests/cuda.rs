//! CUDA kernel probes end to end without a GPU: `bpftime run probe.o -- app`, where the app is
//! nvcc-built device code driven through the driver API exactly as the CUDA runtime drives it,
//! and `libcuda.so.1` is the test double in `tests/fake-cuda` (it runs the PTX it is given on the
//! PTX interpreter). The agent's interposition, patching, fallbacks and map write-back are the
//! real ones; the GPU itself is what `scripts/gpu-check.sh` adds where there is one.

use bpftime_tests::clang::{build_example, build_loader};
use bpftime_tests::cuda_tools::tool_or_skip;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const ELEMENTS: u32 = 1000;
const LAUNCHES: u32 = 3;
/// Threads per launch: blocks of 256 covering the elements.
const THREADS: u64 = (ELEMENTS as u64).div_ceil(256) * 256;

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_bpftime")).parent().unwrap().to_path_buf()
}

/// A scratch directory with the fake driver installed as `libcuda.so.1`, and the driver-API
/// vector add built against a fatbin made with `nvcc_flags`. None (skipped) without nvcc.
fn setup(tag: &str, nvcc_flags: &[&str]) -> Option<PathBuf> {
    setup_app(tag, "vector_add", "driver_vector_add", nvcc_flags)
}

/// A scratch directory with the fake driver installed as `libcuda.so.1`, and `app` there: the
/// driver-API harness `examples/cuda/HARNESS.c` built against the fatbin nvcc makes of
/// `examples/cuda/CU.cu` with `nvcc_flags` (also there, as `CU.fatbin`). None without nvcc.
fn setup_app(tag: &str, cu: &str, harness: &str, nvcc_flags: &[&str]) -> Option<PathBuf> {
    let nvcc = tool_or_skip("nvcc", "CUDA probe tests")?;
    let dir = std::env::temp_dir().join(format!("bpftime-cuda-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("log")).unwrap();
    let fake = bin_dir().join("libbpftime_fake_cuda.so");
    assert!(fake.exists(), "{} is missing: build the workspace (cargo build)", fake.display());
    std::fs::copy(&fake, dir.join("libcuda.so.1")).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let fatbin = dir.join(format!("{cu}.fatbin"));
    let out = Command::new(&nvcc).arg("--fatbin").args(nvcc_flags).arg("-o").arg(&fatbin).arg(root.join(format!("examples/cuda/{cu}.cu"))).output().unwrap();
    assert!(out.status.success(), "nvcc: {}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new("cc")
        .args(["-O2", &format!("-DFATBIN=\"{}\"", fatbin.display())])
        .arg(root.join(format!("examples/cuda/{harness}.c")))
        .args(["-ldl", "-o"])
        .arg(dir.join("app"))
        .output()
        .unwrap();
    assert!(out.status.success(), "cc: {}", String::from_utf8_lossy(&out.stderr));
    Some(dir)
}

fn app_args() -> [String; 2] {
    [ELEMENTS.to_string(), LAUNCHES.to_string()]
}

/// The app on its own (the fake driver, no agent).
fn plain(dir: &Path) -> Output {
    Command::new(dir.join("app")).args(app_args()).env("LD_LIBRARY_PATH", dir).output().unwrap()
}

/// The app under `bpftime run OBJ`, with extra environment.
fn traced(dir: &Path, obj: &Path, env: &[(&str, &str)]) -> Output {
    traced_with_args(dir, obj, env, &app_args())
}

/// The app with arguments `args` under `bpftime run OBJ`, with extra environment.
fn traced_with_args(dir: &Path, obj: &Path, env: &[(&str, &str)], args: &[String]) -> Output {
    traced_with_options(dir, obj, &[], env, args)
}

/// [`traced_with_args`] with `bpftime run` options (`--program`, `--map-size`).
fn traced_with_options(dir: &Path, obj: &Path, options: &[&str], env: &[(&str, &str)], args: &[String]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bpftime"));
    c.arg("run").args(options).arg(obj).arg("--").arg(dir.join("app")).args(args).env("LD_LIBRARY_PATH", dir).env("BPFTIME_FAKE_CUDA_DIR", dir.join("log"));
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The value printed for key `key` of map `name` in `bpftime run`'s dump.
fn dumped(out: &str, name: &str, key: &str) -> Option<String> {
    let start = out.find(&format!("`{name}`"))?;
    let rest = &out[start..];
    let end = rest[1..].find("\nmap ").map_or(rest.len(), |e| e + 1);
    rest[..end].lines().find_map(|l| l.trim().strip_prefix(&format!("{key} => ")).map(str::to_string))
}

#[test]
fn probes_run_in_the_kernels_of_an_unmodified_cuda_app() {
    let Some(dir) = setup("counts", &[]) else { return };
    let base = plain(&dir);
    assert!(base.status.success(), "{}", text(&base.stderr));
    let out = traced(&dir, &build_example("cuda_probes"), &[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    // The app's own output is byte-identical.
    assert_eq!(stdout, text(&base.stdout));
    assert!(!stderr.contains("never attached"), "{stderr}");
    let total = (THREADS * LAUNCHES as u64).to_string();
    assert_eq!(dumped(&stderr, "calls", "0").as_deref(), Some(total.as_str()), "entries: one per thread per launch\n{stderr}");
    assert_eq!(dumped(&stderr, "calls", "1").as_deref(), Some(total.as_str()), "exits: one per thread per launch\n{stderr}");
    let per_sm = dumped(&stderr, "exits_per_sm", "0").unwrap_or_default();
    assert!(per_sm.ends_with(&format!("(sum {total})")), "per-SM exits add up: {per_sm}\n{stderr}");
    assert!(dumped(&stderr, "last_exit_ns", "0").is_some_and(|v| v != "0"), "{stderr}");
    // What the driver was given: one module, the app's kernel with the probes spliced in.
    let log = std::fs::read_to_string(dir.join("log/log")).unwrap();
    assert_eq!(log.matches("load module").count(), 1, "{log}");
    let ptx = std::fs::read_to_string(dir.join("log/module-0.ptx")).unwrap();
    assert!(ptx.contains(".visible .entry _Z10vector_addPKfS0_Pfi") && ptx.contains("bpftime_arena"), "{ptx}");
    assert_eq!(ptx.matches("call.uni (%bpt6), bpftime_p").count(), 2, "one entry and one exit call");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A scratch directory with the fake driver and `app`: examples/cuda/driver_linked.c over
/// the relocatable device code of linked_a.cu and linked_b.cu as nvcc builds it (each unit's
/// fatbin, and the device-linked fatbin). None without nvcc.
fn setup_linked(tag: &str) -> Option<PathBuf> {
    let nvcc = tool_or_skip("nvcc", "CUDA probe tests")?;
    let dir = std::env::temp_dir().join(format!("bpftime-cuda-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("log")).unwrap();
    std::fs::copy(bin_dir().join("libbpftime_fake_cuda.so"), dir.join("libcuda.so.1")).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("examples/cuda");
    let nv = |args: &[&std::ffi::OsStr]| {
        let out = Command::new(&nvcc).args(args).current_dir(&dir).output().unwrap();
        assert!(out.status.success(), "nvcc {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    for unit in ["linked_a", "linked_b"] {
        let cu = src.join(format!("{unit}.cu"));
        nv(&["-rdc=true".as_ref(), "--fatbin".as_ref(), "-o".as_ref(), format!("{unit}.fatbin").as_ref(), cu.as_os_str()]);
        nv(&["-rdc=true".as_ref(), "-c".as_ref(), "-o".as_ref(), format!("{unit}.o").as_ref(), cu.as_os_str()]);
    }
    nv(&["-dlink".as_ref(), "linked_a.o".as_ref(), "linked_b.o".as_ref(), "--fatbin".as_ref(), "-o".as_ref(), "linked.fatbin".as_ref()]);
    // The device runtime's unit, as nvcc links it in: libcudadevrt.a's fatbin.
    let devrt = nvcc.parent().and_then(|b| b.parent()).map(|t| t.join("lib/libcudadevrt.a")).unwrap_or_default();
    let o = Command::new("ar").arg("x").arg(&devrt).arg("cuda_device_runtime.o").current_dir(&dir).output().unwrap();
    assert!(o.status.success(), "ar x {}: {}", devrt.display(), String::from_utf8_lossy(&o.stderr));
    let o = Command::new("objcopy")
        .args(["-O", "binary", "--only-section=__nv_relfatbin", "cuda_device_runtime.o", "devrt.fatbin"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "objcopy: {}", String::from_utf8_lossy(&o.stderr));
    // `app` has the three units nvcc's link gives it; `app-bare` only the application's two.
    for (name, devrt) in [("app", true), ("app-bare", false)] {
        let out = Command::new("cc")
            .current_dir(&dir)
            .args(["-O2", "-DLINKED=\"linked.fatbin\"", "-DUNIT_A=\"linked_a.fatbin\"", "-DUNIT_B=\"linked_b.fatbin\""])
            .arg(format!("-DUNIT_A_FILE=\"{}\"", dir.join("linked_a.fatbin").display()))
            .args(devrt.then_some("-DUNIT_DEVRT=\"devrt.fatbin\""))
            .arg(src.join("driver_linked.c"))
            .args(["-ldl", "-o", name])
            .output()
            .unwrap();
        assert!(out.status.success(), "cc: {}", String::from_utf8_lossy(&out.stderr));
    }
    Some(dir)
}

#[test]
fn relocatable_device_code_is_linked_with_its_probes() {
    let Some(dir) = setup_linked("linked") else { return };
    // On its own, the stand-in driver (a GPU the linked machine code is not for) JIT-links the
    // units' PTX.
    let base = plain(&dir);
    let (n, launches) = (THREADS, LAUNCHES as u64);
    let sum = 3 * n * (n - 1) / 2 + 5 * n;
    let expected = format!("linked: {n} elements, {launches} launches, sum {sum}, blocks seen {}\n", 2 * n.div_ceil(256) * launches);
    assert_eq!(text(&base.stdout), expected, "{}", text(&base.stderr));
    let _ = std::fs::remove_dir_all(dir.join("log"));
    std::fs::create_dir_all(dir.join("log")).unwrap();
    let out = traced(&dir, &build_example("cuda_linked"), &[("BPFTIME_VERBOSE", "1")]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout, expected, "{stderr}");
    assert!(stderr.contains("3 units of relocatable device code linked with the probes"), "{stderr}");
    let threads = (n * launches).to_string();
    for (key, what) in [("0", "scale's entries (unit a)"), ("1", "fill's exits (unit b)"), ("2", "shift<5>'s entries: the kernel both units define, once")] {
        assert_eq!(dumped(&stderr, "linked_hits", key).as_deref(), Some(threads.as_str()), "{what}\n{stderr}");
    }
    assert_eq!(dumped(&stderr, "linked_hits", "3"), Some((3 * n * launches).to_string()), "factor\n{stderr}");
    // The agent linked the units with the driver's linker, the kernels patched in their own
    // units (both copies of the template's), and loaded what it made.
    let log = std::fs::read_to_string(dir.join("log/log")).unwrap();
    assert_eq!(log.matches("link 2 units").count(), 1, "{log}");
    assert_eq!(log.matches("load module").count(), 1, "{log}");
    // linked_b.cu's `parent` launches a kernel: the device runtime's own unit goes into the
    // link as it is (machine code only here), and no library besides.
    assert!(log.contains("link fatbin without PTX for this device: taken, not run") && !log.contains("link library"), "{log}");
    let unit = |i: usize| std::fs::read_to_string(dir.join(format!("log/unit-{i}.ptx"))).unwrap();
    let (a, b) = (unit(0), unit(1));
    assert!(a.contains(".weak .global .align 8 .u64 bpftime_arena") && b.contains(".weak .global .align 8 .u64 bpftime_arena"), "{a}\n{b}");
    assert_eq!(a.matches("call.uni (%bpt6), bpftime_p").count(), 2, "scale and shift<5>\n{a}");
    assert_eq!(b.matches("call.uni (%bpt6), bpftime_p").count(), 2, "fill's return and shift<5>\n{b}");
    // The application links the units' fatbins itself and loads the cubin: the inputs get the
    // probes, and loading what the link made attaches them. `mode` `link` gives the driver the
    // units' bytes (cuLinkAddData); `linkfile` unit a as a file (cuLinkAddFile), which the
    // agent reads and hands the driver as patched text. The app's own run and the traced one's
    // driver log, for each.
    let own_link = |mode: &str| {
        let args = [ELEMENTS.to_string(), LAUNCHES.to_string(), mode.to_string()];
        let fresh_log = || {
            let _ = std::fs::remove_dir_all(dir.join("log"));
            std::fs::create_dir_all(dir.join("log")).unwrap();
        };
        fresh_log();
        let base = Command::new(dir.join("app")).args(&args).env("LD_LIBRARY_PATH", &dir).env("BPFTIME_FAKE_CUDA_DIR", dir.join("log")).output().unwrap();
        assert_eq!(text(&base.stdout), expected, "{}", text(&base.stderr));
        let plain_log = std::fs::read_to_string(dir.join("log/log")).unwrap();
        fresh_log();
        let out = traced_with_args(&dir, &build_example("cuda_linked"), &[], &args);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "{stderr}");
        assert_eq!(stdout, expected, "{stderr}");
        for key in ["0", "1", "2"] {
            assert_eq!(dumped(&stderr, "linked_hits", key).as_deref(), Some(threads.as_str()), "{mode}: key {key}\n{stderr}");
        }
        assert!(!stderr.contains("never attached"), "{stderr}");
        (plain_log, std::fs::read_to_string(dir.join("log/log")).unwrap())
    };
    let (_, log) = own_link("link");
    assert_eq!(log.matches("link 2 units").count(), 1, "the application's link only\n{log}");
    let (plain_log, log) = own_link("linkfile");
    assert_eq!(plain_log.matches("link file").count(), 1, "on its own, the file goes to the driver\n{plain_log}");
    assert!(!log.contains("link file"), "the agent gave the driver the file's patched text\n{log}");
    // Without the device runtime's unit, the relink takes it from libcudadevrt.a.
    let _ = std::fs::remove_dir_all(dir.join("log"));
    std::fs::create_dir_all(dir.join("log")).unwrap();
    std::fs::copy(dir.join("app-bare"), dir.join("app")).unwrap();
    let out = traced(&dir, &build_example("cuda_linked"), &[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout, expected, "{stderr}");
    assert_eq!(dumped(&stderr, "linked_hits", "0").as_deref(), Some(threads.as_str()), "{stderr}");
    let log = std::fs::read_to_string(dir.join("log/log")).unwrap();
    assert!(log.lines().any(|l| l.starts_with("link library ") && l.ends_with("/libcudadevrt.a")), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gpu_ring_buffer_records_reach_the_host_reader() {
    let Some(dir) = setup("ring", &[]) else { return };
    let out = traced(&dir, &build_example("cuda_events"), &[]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // One record per block per launch: block, threads, the kernel's `n` parameter, clock.
    let records: Vec<Vec<u8>> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("ringbuf `events`: 24 bytes: "))
        .map(|hex| hex.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect())
        .collect();
    assert_eq!(records.len() as u64, THREADS / 256 * LAUNCHES as u64, "{stderr}");
    let word = |r: &[u8], at: usize| u32::from_le_bytes(r[at..at + 4].try_into().unwrap());
    // Records of one SM come in order; those of different SMs in the order their SMs took
    // chunks of the ring (as a CPU ring orders records by reservation, not by CPU).
    let mut blocks: Vec<u64> = records.iter().map(|r| word(r, 0) as u64).collect();
    blocks.sort();
    let want: Vec<u64> = (0..THREADS / 256).flat_map(|b| std::iter::repeat_n(b, LAUNCHES as usize)).collect();
    assert_eq!(blocks, want, "each block once per launch\n{stderr}");
    for (i, r) in records.iter().enumerate() {
        assert_eq!((word(r, 4), word(r, 8)), (256, ELEMENTS), "threads and n of record {i}\n{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A ring too small for a record per thread (4 KiB, 1,024 threads a launch): every record
/// reaches the host reader or is counted lost there, the GPU's drops included.
#[test]
fn gpu_ring_records_that_do_not_fit_are_counted_lost_on_the_host() {
    let Some(dir) = setup("ringlost", &[]) else { return };
    let options = ["--program", "ring_event", "--map-size", "events=4096", "--map-size", "per_thread=1024"];
    let out = traced_with_options(&dir, &build_example("cuda_bench"), &options, &[], &app_args());
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let records = stderr.lines().filter(|l| l.starts_with("ringbuf `events`: 4 bytes: ")).count() as u64;
    let lost: u64 = stderr.lines().filter_map(|l| l.strip_suffix(" lost").and_then(|l| l.rsplit(' ').next()).and_then(|n| n.parse::<u64>().ok())).sum();
    assert!(lost > 0 && records > 0, "{records} records, {lost} lost\n{stderr}");
    assert_eq!(records + lost, THREADS * LAUNCHES as u64, "every thread's record arrived or was counted lost\n{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_refused_module_falls_back_to_the_original_and_says_why_once() {
    let Some(dir) = setup("refused", &[]) else { return };
    let base = plain(&dir);
    let out = traced(&dir, &build_example("cuda_probes"), &[("BPFTIME_FAKE_CUDA_REJECT", "bpftime_arena")]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(text(&out.stdout), text(&base.stdout));
    assert_eq!(stderr.matches("the driver refused a CUDA module with probes (CUDA_ERROR_INVALID_PTX)").count(), 1, "{stderr}");
    assert_eq!(dumped(&stderr, "calls", "0"), None, "no probe ran\n{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sass_only_modules_run_untouched_and_the_agent_says_so() {
    // Machine code for sm_75 only: nothing to patch (the fake driver cannot run SASS either, so
    // the app fails the same way with and without the agent).
    let Some(dir) = setup("sass", &["-gencode", "arch=compute_75,code=sm_75"]) else { return };
    let base = plain(&dir);
    let out = traced(&dir, &build_example("cuda_probes"), &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), base.status.code(), "{stderr}");
    assert_eq!(text(&out.stdout), text(&base.stdout));
    assert!(stderr.contains("has no PTX for this GPU (only SASS: sm_75); its kernels run without probes"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_cuda_probes_the_driver_sees_the_original_image() {
    let Some(dir) = setup("untouched", &[]) else { return };
    let out = traced(&dir, &build_example("uprobe_calls"), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ptx = std::fs::read_to_string(dir.join("log/module-0.ptx")).unwrap();
    assert!(!ptx.contains("bpftime"), "nothing spliced");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The agent interposes `dlsym`; a library preloaded after it that finds the next `puts` with
/// `dlsym(RTLD_NEXT, ...)` must still get libc's (glibc decides "next" from the caller).
#[test]
fn dlsym_rtld_next_still_means_next_after_the_caller() {
    let dir = std::env::temp_dir().join(format!("bpftime-dlsym-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("shim.c");
    std::fs::write(
        &src,
        "#define _GNU_SOURCE\n#include <dlfcn.h>\n#include <stdio.h>\n\
         int puts(const char *s) { int (*next)(const char *) = dlsym(RTLD_NEXT, \"puts\"); fputs(\"shim: \", stdout); return next(s); }\n",
    )
    .unwrap();
    let shim = dir.join("libshim.so");
    let out = Command::new("cc").args(["-shared", "-fPIC", "-O2", "-o"]).arg(&shim).arg(&src).arg("-ldl").output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let main = dir.join("main.c");
    std::fs::write(&main, "#include <stdio.h>\nint main(void) { puts(\"hello\"); return 0; }\n").unwrap();
    let out = Command::new("cc").args(["-O2", "-o"]).arg(dir.join("hello")).arg(&main).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let agent = bin_dir().join("libbpftime.so");
    let preload = format!("{} {}", agent.display(), shim.display());
    let out = Command::new(dir.join("hello")).env("LD_PRELOAD", preload).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "shim: hello\n");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `dlsym(RTLD_DEFAULT, ...)` from a library opened with `RTLD_LOCAL` finds what its own
/// dependencies define, as glibc answers its caller, also for a name the agent looks at
/// (starting with "cu"): the agent's `dlsym` must not make the agent the caller.
#[test]
fn dlsym_rtld_default_searches_the_callers_own_scope() {
    let dir = std::env::temp_dir().join(format!("bpftime-dlsym-default-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cc = |args: &[&str]| {
        let out = Command::new("cc").current_dir(&dir).args(args).output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    };
    std::fs::write(dir.join("dep.c"), "int dep_value(void) { return 42; }\nint cuDepValue(void) { return 7; }\n").unwrap();
    cc(&["-shared", "-fPIC", "-O2", "-o", "libdep.so", "dep.c"]);
    std::fs::write(
        dir.join("plugin.c"),
        "#define _GNU_SOURCE\n#include <dlfcn.h>\n\
         static int call(const char *n) { int (*f)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, n); return f ? f() : -1; }\n\
         int plugin(void) { return call(\"dep_value\") * 100 + call(\"cuDepValue\"); }\n",
    )
    .unwrap();
    cc(&["-shared", "-fPIC", "-O2", "-o", "libplugin.so", "plugin.c", "-L.", "-Wl,--no-as-needed", "-ldep", "-Wl,-rpath,$ORIGIN", "-ldl"]);
    std::fs::write(
        dir.join("main.c"),
        "#include <dlfcn.h>\n#include <stdio.h>\n\
         int main(int argc, char **argv) { void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL); if (!h) return 2;\n\
         int (*p)(void) = (int (*)(void))dlsym(h, \"plugin\"); printf(\"%d\\n\", p ? p() : -9); return 0; }\n",
    )
    .unwrap();
    cc(&["-O2", "-o", "main", "main.c", "-ldl"]);
    let plugin = dir.join("libplugin.so");
    let plain = Command::new(dir.join("main")).arg(&plugin).output().unwrap();
    assert_eq!(text(&plain.stdout), "4207\n", "{}", text(&plain.stderr));
    let agent = bin_dir().join("libbpftime.so");
    let out = Command::new(dir.join("main")).arg(&plugin).env("LD_PRELOAD", &agent).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "4207\n", "{}", text(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The sum of the non-zero values `bpftime run` printed for map `name`.
fn dumped_sum(out: &str, name: &str) -> u64 {
    let Some(start) = out.find(&format!("`{name}`")) else { return 0 };
    let rest = &out[start..];
    let end = rest[1..].find("\nmap ").map_or(rest.len(), |e| e + 1);
    rest[..end].lines().filter_map(|l| l.split_once(" => ")).filter_map(|(_, v)| v.trim().parse::<u64>().ok()).sum()
}

#[test]
fn launch_counts_block_durations_and_sm_histograms() {
    let Some(dir) = setup("timing", &[]) else { return };
    let blocks = THREADS / 256 * LAUNCHES as u64;
    let out = traced(&dir, &build_example("cuda_launches"), &[]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(dumped(&stderr, "launches", "0").as_deref(), Some(LAUNCHES.to_string().as_str()), "vector_add launches\n{stderr}");
    // Probes on kernels this app does not have are reported, not attached.
    assert!(stderr.contains("`gemm_launch` was never attached to gemm"), "{stderr}");
    let out = traced(&dir, &build_example("cuda_timing"), &[]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(dumped_sum(&stderr, "duration_log2"), blocks, "one duration per block per launch\n{stderr}");
    assert_eq!(dumped_sum(&stderr, "blocks_per_sm"), blocks, "every block on some SM\n{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every probe example spliced into every CUDA example that has its kernels; ptxas accepts the
/// result for the oldest and newest targets we support.
#[test]
fn every_probe_example_patches_every_cuda_example() {
    let Some(nvcc) = tool_or_skip("nvcc", "patching the CUDA examples") else { return };
    let Some(ptxas) = tool_or_skip("ptxas", "patching the CUDA examples") else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let dir = std::env::temp_dir().join(format!("bpftime-cuda-examples-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // (example, probe object, probes expected in it)
    let expected = [
        ("vector_add", "cuda_probes", 2),
        ("vector_add", "cuda_events", 1),
        ("vector_add", "cuda_timing", 2),
        ("vector_add", "cuda_launches", 1),
        ("vector_add", "cuda_counter", 2),
        ("vector_add", "cuda_memory", 1),
        ("gemm", "cuda_memory", 1),
        ("reduce", "cuda_memory", 2),
        ("gemm", "cuda_launches", 1),
        ("reduce", "cuda_launches", 2),
        ("streams", "cuda_launches", 1),
        ("graph", "cuda_launches", 1),
        ("gemm", "cuda_probes", 0),
        ("vector_add", "cuda_exit_blocks", 2),
        ("vector_add", "cuda_launch_latency", 1),
        ("vector_add", "cuda_watched_blocks", 1),
        ("vector_add", "cuda_ring_records", 1),
        ("vector_add", "cuda_shared_counts", 1),
        ("vector_add", "cuda_host_memory", 1),
        ("globals", "cuda_globals", 2),
    ];
    for (example, probe, n) in expected {
        let fatbin = dir.join(format!("{example}.fatbin"));
        if !fatbin.exists() {
            let out = Command::new(&nvcc).arg("--fatbin").arg("-o").arg(&fatbin).arg(root.join(format!("examples/cuda/{example}.cu"))).output().unwrap();
            assert!(out.status.success(), "nvcc {example}: {}", text(&out.stderr));
        }
        let out_dir = dir.join(format!("{example}-{probe}"));
        let out = Command::new(env!("CARGO_BIN_EXE_bpftime"))
            .args(["cuda", "patch"])
            .arg(build_example(probe))
            .arg(&fatbin)
            .arg("-o")
            .arg(&out_dir)
            .output()
            .unwrap();
        let report = text(&out.stdout);
        assert!(out.status.success(), "{example} + {probe}: {}", text(&out.stderr));
        assert_eq!(report.matches(" probe `").count(), n, "{example} + {probe}:\n{report}");
        for e in std::fs::read_dir(&out_dir).unwrap() {
            let ptx = e.unwrap().path();
            for sm in ["sm_75", "sm_90"] {
                let o = Command::new(&ptxas).arg(format!("-arch={sm}")).arg(&ptx).arg("-o").arg(dir.join("out.cubin")).output().unwrap();
                assert!(o.status.success(), "ptxas {sm} refused {example} + {probe}: {}", text(&o.stderr));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// What each thread writes before a probe's call is what the probe reads: nothing for an
/// empty probe (which then costs the kernel no registers either), the three ids a per-thread
/// counter reads of its context and the state its map lookup checks, and no context for a
/// shared counter. Local memory written per thread is what made empty probes cost 32x on a
/// bandwidth-bound kernel.
#[test]
fn a_probe_site_writes_only_what_its_probe_reads() {
    let Some(nvcc) = tool_or_skip("nvcc", "patching the vector add") else { return };
    let Some(ptxas) = tool_or_skip("ptxas", "patching the vector add") else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let dir = std::env::temp_dir().join(format!("bpftime-cuda-site-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fatbin = dir.join("vector_add.fatbin");
    let out = Command::new(&nvcc).arg("--fatbin").arg("-o").arg(&fatbin).arg(root.join("examples/cuda/vector_add.cu")).output().unwrap();
    assert!(out.status.success(), "nvcc: {}", text(&out.stderr));
    // The stores of the probe sites (their addresses are the sites' registers) in the kernel,
    // and the report (with what ptxas says the splice costs the kernel).
    let patched = |programs: &[&str]| -> (Vec<String>, String) {
        let out_dir = dir.join(programs.join("+"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bpftime"));
        cmd.args(["cuda", "patch"]).arg(build_example("cuda_bench")).arg(&fatbin).arg("-o").arg(&out_dir).env("PTXAS", &ptxas);
        for p in programs {
            cmd.args(["--program", p]);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{programs:?}: {}", text(&out.stderr));
        let ptx = std::fs::read_dir(&out_dir).unwrap().next().unwrap().unwrap().path();
        let module = std::fs::read_to_string(&ptx).unwrap();
        let kernel = &module[module.find(".visible .entry _Z10vector_add").expect("the kernel")..];
        (kernel.lines().map(str::trim).filter(|l| l.starts_with("st.") && l.contains("[%bpt")).map(String::from).collect(), text(&out.stdout))
    };
    // `_Z10vector_addPKfS0_Pfi for sm_75: A -> B registers, ...`
    let registers = |report: &str| -> (u32, u32) {
        let line = report.lines().find(|l| l.contains(" registers, ")).unwrap_or_else(|| panic!("no register report in\n{report}"));
        let counts = line.split(": ").nth(1).and_then(|r| r.split(" registers").next()).unwrap_or_default();
        let (a, b) = counts.split_once(" -> ").unwrap_or_else(|| panic!("{line}"));
        (a.parse().unwrap(), b.parse().unwrap())
    };
    let (stores, report) = patched(&["empty_entry", "empty_exit"]);
    assert_eq!(stores, Vec::<String>::new(), "an empty probe's sites write nothing");
    let (before, after) = registers(&report);
    assert_eq!(after, before, "an empty probe adds no registers to the kernel\n{report}");
    let (stores, report) = patched(&["thread_count"]);
    let ctx: Vec<&str> = stores.iter().filter(|l| l.contains("[%bpt2")).map(String::as_str).collect();
    // Four parameters (32 bytes), then tid.x at 32, ctaid.x at 44, ntid.x at 56.
    assert_eq!(ctx, ["st.u32 [%bpt2+32], %bpw0;", "st.u32 [%bpt2+44], %bpw0;", "st.u32 [%bpt2+56], %bpw0;"], "{stores:#?}");
    assert!(stores.len() <= 9, "{stores:#?}");
    let (before, after) = registers(&report);
    assert!(after > before, "a probe calling helpers costs the kernel registers, and the report says how many\n{report}");
    let (stores, _) = patched(&["shared_count"]);
    assert!(!stores.iter().any(|l| l.contains("[%bpt2")), "a probe that reads no context gets none\n{stores:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// With a copy back queued after every launch (stream-ordered, on the driver's thread) as well
/// as at the app's synchronisation, counts stay exact and no ring record is seen twice.
#[test]
fn copies_after_every_launch_keep_counts_exact_and_records_single() {
    let Some(dir) = setup("every-launch", &[]) else { return };
    let every = [("BPFTIME_CUDA_COPY_MS", "0")];
    let out = traced(&dir, &build_example("cuda_probes"), &every);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let total = (THREADS * LAUNCHES as u64).to_string();
    assert_eq!(dumped(&stderr, "calls", "0").as_deref(), Some(total.as_str()), "{stderr}");
    assert_eq!(dumped(&stderr, "calls", "1").as_deref(), Some(total.as_str()), "{stderr}");
    let out = traced(&dir, &build_example("cuda_events"), &every);
    let stderr = text(&out.stderr);
    assert_eq!(stderr.matches("ringbuf `events`: 24 bytes:").count() as u64, THREADS / 256 * LAUNCHES as u64, "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A value in `0..n` from `rng`.
fn below(rng: &mut bpftime_tests::rng::Rng, n: usize) -> usize {
    rng.below(n as u64) as usize
}

/// Fatbins and PTX as nvcc makes them, mutated thousands of ways (bytes flipped, sizes and
/// offsets set to extremes, truncated; PTX lines dropped, cut, doubled): the readers and the
/// patcher return a result or an error with words in it, never a panic or a hang.
#[test]
fn malformed_fatbins_and_ptx_are_errors_not_panics() {
    use bpftime_gpu_ptx::fatbin::{parse, ptx_kernels, EntryKind};
    use bpftime_gpu_ptx::patch::{patch, Probe};
    let Some(nvcc) = tool_or_skip("nvcc", "fuzzing the fatbin reader") else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let dir = std::env::temp_dir().join(format!("bpftime-cuda-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut fatbins = vec![];
    for (tag, flags) in [("zstd", &[][..]), ("plain", &["--no-compress"][..])] {
        let out = dir.join(format!("{tag}.fatbin"));
        let o = Command::new(&nvcc).arg("--fatbin").args(flags).arg("-o").arg(&out).arg(root.join("examples/cuda/vector_add.cu")).output().unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
        fatbins.push(std::fs::read(&out).unwrap());
    }
    let obj = bpftime_object::Object::parse(&std::fs::read(build_example("cuda_probes")).unwrap()).unwrap();
    let probes: Vec<Probe> = ["on_entry", "on_exit"]
        .iter()
        .map(|name| {
            let g = bpftime_runtime::gpu::gpu_program(&obj, Some(name), bpftime_gpu_ptx::Target::sm(75), 1).unwrap();
            let (kernel, exit) = if *name == "on_entry" { ("_Z10vector_addPKfS0_Pfi", false) } else { ("vector_add", true) };
            Probe::new(name, kernel, exit, &g.program, g.ptx)
        })
        .collect();
    let clean = parse(&fatbins[1], 0).unwrap();
    let ptx = String::from_utf8(clean.entries.iter().find(|e| e.kind == EntryKind::Ptx).unwrap().contents(&fatbins[1]).unwrap()).unwrap();
    let mut rng = bpftime_tests::rng::Rng(0x9e37_79b9_7f4a_7c15);
    let (mut parsed, mut refused) = (0, 0);
    for i in 0..3000 {
        let mut m = fatbins[i % 2].clone();
        match below(&mut rng, 4) {
            0 => {
                for _ in 0..1 + below(&mut rng, 8) {
                    let at = below(&mut rng, m.len());
                    m[at] ^= 1 << below(&mut rng, 8);
                }
            }
            1 => {
                // A header or entry-header field set to an extreme.
                let at = below(&mut rng, m.len().min(256)) & !3;
                let v = [0u64, 1, u32::MAX as u64, u64::MAX, rng.next_u64()][below(&mut rng, 5)];
                let n = [2, 4, 8][below(&mut rng, 3)].min(m.len() - at);
                m[at..at + n].copy_from_slice(&v.to_le_bytes()[..n]);
            }
            2 => m.truncate(below(&mut rng, m.len())),
            _ => {
                let at = below(&mut rng, m.len());
                m.splice(at..at, (0..below(&mut rng, 64)).map(|_| rng.next_u64() as u8));
            }
        }
        match parse(&m, 0) {
            Ok(f) => {
                parsed += 1;
                for e in &f.entries {
                    match e.contents(&m) {
                        Ok(c) => {
                            let t = String::from_utf8_lossy(&c);
                            let _ = ptx_kernels(&t);
                            if let Err(err) = patch(&t, &probes) {
                                assert!(!err.is_empty());
                            }
                        }
                        Err(err) => assert!(!err.is_empty()),
                    }
                }
            }
            Err(e) => {
                refused += 1;
                assert!(!e.to_string().is_empty());
            }
        }
    }
    // Also nvcc's PTX of a unit of relocatable device code: calls through `.param` buffers, a
    // kernel launching a kernel, a template's `.weak` entry.
    let rdc_path = dir.join("linked_b.ptx");
    let o = Command::new(&nvcc).args(["-rdc=true", "--ptx", "-o"]).arg(&rdc_path).arg(root.join("examples/cuda/linked_b.cu")).output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let rdc = std::fs::read_to_string(&rdc_path).unwrap();
    assert!(bpftime_gpu_ptx::interp::Module::parse(&rdc).is_ok());
    let bases: [Vec<&str>; 2] = [ptx.lines().collect(), rdc.lines().collect()];
    for i in 0..2000 {
        let mut l = bases[i % 2].clone();
        match below(&mut rng, 4) {
            0 => {
                for _ in 0..1 + below(&mut rng, 4) {
                    let at = below(&mut rng, l.len());
                    l.remove(at);
                }
            }
            1 => l.truncate(below(&mut rng, l.len())),
            2 => {
                let at = below(&mut rng, l.len());
                let dup = l[below(&mut rng, l.len())];
                l.insert(at, dup);
            }
            _ => {
                let at = below(&mut rng, l.len());
                let forms = [
                    "{",
                    "}",
                    "ret;",
                    ".visible .entry x(",
                    "@%p1 ret;",
                    ")",
                    "call.uni (retval0), ",
                    ".param .b32 param0;",
                    "st.param.b32 [param0+4], %r1;",
                    "(",
                    ");",
                    ".weak .global .u32 g;",
                    ".extern .func f\n(",
                ];
                l.insert(at, forms[below(&mut rng, forms.len())]);
            }
        }
        let t = l.join("\n");
        let _ = ptx_kernels(&t);
        if let Err(err) = patch(&t, &probes) {
            assert!(!err.is_empty());
        }
        // As a unit of relocatable device code, linked with the original, and run by the
        // interpreter (the stand-in driver's): errors, never panics.
        let _ = bpftime_gpu_ptx::patch::patch_unit(&t, &probes);
        let _ = bpftime_gpu_ptx::link::link_units(&[t.as_str(), ptx.as_str()]);
        let _ = bpftime_gpu_ptx::link::unresolved_functions(&[t.as_str()]);
        let _ = bpftime_gpu_ptx::interp::Module::parse(&t);
    }
    println!("fatbin mutations: {parsed} parsed, {refused} refused with a reason; 2000 PTX mutations patched or refused");
    let _ = std::fs::remove_dir_all(&dir);
}

/// An application linked against libcuda itself (`-lcuda`, as the driver API samples are: no
/// dlopen, no cuGetProcAddress) gets its probes too: the agent defines the entry points it
/// wraps; also for a module it loads from a file (`cuModuleLoad`).
#[test]
fn an_app_linked_against_libcuda_gets_probes_too() {
    let Some(dir) = setup("direct", &[]) else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = Command::new("cc")
        .args(["-O2", &format!("-DFATBIN=\"{}\"", dir.join("vector_add.fatbin").display())])
        .arg(root.join("examples/cuda/driver_direct.c"))
        .arg("-L")
        .arg(&dir)
        .args(["-l:libcuda.so.1", "-o"])
        .arg(dir.join("direct"))
        .output()
        .unwrap();
    assert!(out.status.success(), "cc: {}", text(&out.stderr));
    let plain = Command::new(dir.join("direct")).args(app_args()).env("LD_LIBRARY_PATH", &dir).output().unwrap();
    assert!(plain.status.success(), "{}", text(&plain.stderr));
    let total = (THREADS * LAUNCHES as u64).to_string();
    // The embedded fatbin (`cuModuleLoadData`), then the same from a file (`cuModuleLoad`).
    for extra in [vec![], vec![dir.join("vector_add.fatbin")]] {
        let traced = Command::new(env!("CARGO_BIN_EXE_bpftime"))
            .arg("run")
            .arg(build_example("cuda_probes"))
            .arg("--")
            .arg(dir.join("direct"))
            .args(app_args())
            .args(&extra)
            .env("LD_LIBRARY_PATH", &dir)
            .env("BPFTIME_FAKE_CUDA_DIR", dir.join("log"))
            .output()
            .unwrap();
        let stderr = text(&traced.stderr);
        assert!(traced.status.success(), "{stderr}");
        assert_eq!(traced.stdout, plain.stdout, "the app's output is its own");
        assert_eq!(dumped(&stderr, "calls", "0"), Some(total.clone()), "entries ({extra:?})\n{stderr}");
        assert_eq!(dumped(&stderr, "calls", "1"), Some(total.clone()), "exits ({extra:?})\n{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same application under `bpftime start` with its CUDA probes loaded after it started,
/// linked against libcuda or looking each entry point up with dlsym: the agent, which had no
/// probes when the application bound its entry points, and for the second never looked up
/// `cuGetProcAddress`, takes the driver's own to hook the driver then (the agent's `dlsym`
/// handed out its wrapper, which called itself without end).
#[test]
fn probes_loaded_late_reach_an_app_binding_the_driver_by_name() {
    for (tag, by_name) in [("direct-late", false), ("by-name-late", true)] {
        probes_loaded_late_reach(tag, by_name);
    }
}

fn probes_loaded_late_reach(tag: &str, by_name: bool) {
    let Some(dir) = setup(tag, &[]) else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut cc = Command::new("cc");
    cc.args(["-O2", &format!("-DFATBIN=\"{}\"", dir.join("vector_add.fatbin").display())]).arg(root.join("examples/cuda/driver_direct.c"));
    if by_name {
        cc.args(["-DBY_NAME", "-ldl"]);
    } else {
        cc.arg("-L").arg(&dir).arg("-l:libcuda.so.1");
    }
    let out = cc.arg("-o").arg(dir.join("app")).output().unwrap();
    assert!(out.status.success(), "cc: {}", text(&out.stderr));
    late_probes_count_launches_1_and_2(tag, &dir);
}

/// A driver whose `cuGetProcAddress` hands out the addresses of its exported functions (bound by
/// the dynamic linker to the agent's definitions of those names, which serve `-lcuda`
/// applications) still gets each launch wrapped once: counts stay exact.
#[test]
fn a_driver_handing_out_its_exported_functions_is_wrapped_once() {
    let Some(dir) = setup("exported", &[]) else { return };
    let out = traced(&dir, &build_example("cuda_probes"), &[("BPFTIME_FAKE_CUDA_EXPORTED_TABLE", "1")]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(out.stdout, plain(&dir).stdout, "the app's output is its own");
    let total = (THREADS * LAUNCHES as u64).to_string();
    assert_eq!(dumped(&stderr, "calls", "0"), Some(total.clone()), "entries\n{stderr}");
    assert_eq!(dumped(&stderr, "calls", "1"), Some(total), "exits\n{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A memory access probe (`kprobe/__memcapture`) runs after every load and store of the
/// kernels, under the instruction's guard: the vector add loads two floats and stores one for
/// each of its elements (the threads past the end touch nothing).
#[test]
fn memory_access_probes_see_every_load_and_store() {
    let Some(dir) = setup("memory", &[]) else { return };
    let out = traced(&dir, &build_example("cuda_memory"), &[]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let n = (ELEMENTS * LAUNCHES) as u64;
    assert_eq!(dumped(&stderr, "accesses", "0"), Some((2 * n).to_string()), "loads\n{stderr}");
    assert_eq!(dumped(&stderr, "accesses", "1"), Some(n.to_string()), "stores\n{stderr}");
    assert_eq!(dumped(&stderr, "bytes", "0"), Some((8 * n).to_string()), "bytes loaded\n{stderr}");
    assert_eq!(dumped(&stderr, "bytes", "1"), Some((4 * n).to_string()), "bytes stored\n{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// CPU and GPU probes of one object share maps: a uprobe stamps each launch on the CPU, the
/// kernel's entry probe reads that stamp on the GPU. Launch L must see stamp L + 1.
#[test]
fn cpu_and_gpu_probes_share_maps() {
    let Some(dir) = setup("shared", &[]) else { return };
    let out = traced(&dir, &build_example("cuda_launch_stamp"), &[]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for stamp in 1..=LAUNCHES {
        assert_eq!(dumped(&stderr, "seen", &stamp.to_string()).as_deref(), Some("1"), "launch {stamp} saw its stamp\n{stderr}");
    }
    assert_eq!(dumped(&stderr, "seen", "0"), None, "no launch ran before its stamp\n{stderr}");
    assert_eq!(dumped(&stderr, "launch_stamp", "0").as_deref(), Some(LAUNCHES.to_string().as_str()), "the host's value stays\n{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A CPU timestamp and a GPU timestamp compare: `bpf_ktime_get_ns` on the GPU is the host's
/// CLOCK_MONOTONIC (`%globaltimer`, which counts CLOCK_REALTIME, moved onto it), so the latency
/// from the launch (a uprobe) to the kernel's entry (its probe) is positive and small; without
/// that it would be the distance between the two clocks (about 56 years).
#[test]
fn gpu_and_cpu_timestamps_compare() {
    let Some(dir) = setup("latency", &[]) else { return };
    let out = traced(&dir, &build_example("cuda_launch_latency"), &[]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(dumped_sum(&stderr, "latency_log2"), LAUNCHES as u64, "every launch measured\n{stderr}");
    assert_eq!(dumped_sum(&stderr, "before_launch"), 0, "no kernel started before its launch\n{stderr}");
    for bit in 30..64 {
        assert_eq!(dumped(&stderr, "latency_log2", &bit.to_string()), None, "no latency of a second or more\n{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Hash maps a GPU probe shares with the host: one a loader filled before the app started
/// (bpftool, through the syscall server) is on the GPU from the first launch; one a CPU uprobe
/// writes between launches reaches the GPU before each launch. Launch L watches blocks 0..=L,
/// block 1 weighs 10: seen = [3, 2 x 10, 1, 0] x 256 threads.
#[test]
fn gpu_probes_see_the_hosts_hash_maps() {
    hosts_hash_maps_reach_the_gpu("hashes", &[]);
}

/// The same with launches that run after their calls return, as on a GPU (the stand-in driver's
/// async mode: launches, copies and host functions run at the app's synchronisation, after the
/// CPU probe wrote every launch's key): each launch still sees the keys written before it was
/// queued, and not the later ones (on an H200, block 2 was counted twice before the merge took
/// the host's entries as of the launch's queueing).
#[test]
fn gpu_probes_see_the_hosts_hash_maps_as_of_each_launch_when_launches_run_later() {
    hosts_hash_maps_reach_the_gpu("hashes-async", &[("BPFTIME_FAKE_CUDA_ASYNC", "1")]);
}

fn hosts_hash_maps_reach_the_gpu(tag: &str, env: &[(&str, &str)]) {
    let Some(dir) = setup(tag, &[]) else { return };
    let bpftool = PathBuf::from("/usr/sbin/bpftool");
    if !bpftool.exists() {
        println!("skipping: no bpftool to fill a map (apt install bpftool; bash scripts/setup.sh does)");
        return;
    }
    let shm = format!("bpftime-cuda-{tag}-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let bpftime = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_bpftime"));
        c.args(["--shm", &shm]);
        c
    };
    let run = |c: &mut Command| {
        let o = c.output().unwrap();
        assert!(o.status.success(), "{c:?}: {}{}", text(&o.stdout), text(&o.stderr));
        text(&o.stdout) + &text(&o.stderr)
    };
    run(bpftime().args(["shm", "create"]));
    run(bpftime().arg("load").arg(build_example("cuda_watched_blocks")));
    run(bpftime()
        .args(["load", "--"])
        .arg(&bpftool)
        .args(["map", "update", "name", "weights", "key", "1", "0", "0", "0", "value", "10", "0", "0", "0", "0", "0", "0", "0"]));
    let app = run(bpftime().args(["start", "--"]).arg(dir.join("app")).args(app_args()).env("LD_LIBRARY_PATH", &dir).envs(env.iter().copied()));
    let seen = run(bpftime().args(["map", "dump", "seen"]));
    let expected = [3 * 256, 2 * 256 * 10, 256];
    for (block, want) in expected.iter().enumerate() {
        assert_eq!(dumped(&seen, "seen", &block.to_string()), Some(want.to_string()), "block {block}\n{seen}\n{app}");
    }
    assert_eq!(dumped(&seen, "seen", "3"), None, "block 3 was never watched\n{seen}");
    bpftime_tests::remove_region(&shm);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A loader writes maps only GPU programs use while the app runs (bpftool through the syscall
/// server, between launches): a new factor reaches the GPU before the next launch, a counter
/// it clears counts from 0 again, a hash key it adds is seen and one it deletes is gone.
#[test]
fn a_loaders_writes_between_launches_reach_the_gpu() {
    let Some(dir) = setup("loader-writes", &[]) else { return };
    let Some(s) = Session::with_bpftool("loader-writes") else { return };
    s.bpftime(&["load", build_example("cuda_host_config").to_str().unwrap()]);
    s.bpftool("update name config key 0 0 0 0 value 1 0 0 0 0 0 0 0");
    let mut app = WaitingApp::start(&s, &dir, &[("BPFTIME_CUDA_COPY_MS", "0")]);
    app.wait_for("before launch 1");
    s.bpftool("update name config key 0 0 0 0 value 10 0 0 0 0 0 0 0");
    s.bpftool("update name counts key 1 0 0 0 value 0 0 0 0 0 0 0 0");
    s.bpftool("update name allowed key 1 0 0 0 value 232 3 0 0 0 0 0 0");
    app.release(1);
    app.wait_for("before launch 2");
    s.bpftool("update name config key 0 0 0 0 value 100 0 0 0 0 0 0 0");
    s.bpftool("delete name allowed key 1 0 0 0");
    app.release(2);
    app.finish();
    let counts = s.bpftime(&["map", "dump", "counts"]);
    assert_eq!(dumped(&counts, "counts", "0"), Some((THREADS * (1 + 10 + 100)).to_string()), "factor 1, then 10, then 100\n{counts}");
    assert_eq!(dumped(&counts, "counts", "1"), Some((THREADS * 2).to_string()), "cleared before launch 1\n{counts}");
    assert_eq!(dumped(&counts, "counts", "2"), Some((256 * 1000).to_string()), "block 1 allowed in launch 1 only\n{counts}");
    assert!(s.bpftime(&["map", "dump", "allowed"]).contains("(0 entries)"), "the deleted key stays deleted");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Maps declared in host memory (bpftime's 1512 and 1513) are the region's values themselves
/// on the GPU: with no copy back until the app synchronises, the host reads the kernels' counts
/// after each launch (an ordinary array's copy on the device is not back yet), and what the
/// loader writes (a new factor, a cleared count) is what the next launch finds.
#[test]
fn maps_in_host_memory_are_shared_with_the_gpu_as_they_change() {
    let Some(dir) = setup("host-memory", &[]) else { return };
    let Some(s) = Session::with_bpftool("host-memory") else { return };
    s.bpftime(&["load", build_example("cuda_host_memory").to_str().unwrap()]);
    s.bpftool("update name settings key 0 0 0 0 value 1 0 0 0 0 0 0 0");
    let mut app = WaitingApp::start(&s, &dir, &[("BPFTIME_CUDA_COPY_MS", "100000000"), ("BPFTIME_VERBOSE", "1")]);
    app.wait_for("before launch 1");
    let maps = s.bpftime(&["map", "dump", "live"]) + &s.bpftime(&["map", "dump", "copied"]);
    assert_eq!(dumped(&maps, "live", "0"), Some(THREADS.to_string()), "launch 0's count, read while the app runs\n{maps}");
    assert_eq!(dumped(&maps, "live", "1"), Some(THREADS.to_string()), "factor 1\n{maps}");
    assert_eq!(dumped(&maps, "copied", "0"), None, "the ordinary array's count is still on the device\n{maps}");
    s.bpftool("update name settings key 0 0 0 0 value 10 0 0 0 0 0 0 0");
    s.bpftool("update name live key 0 0 0 0 value 0 0 0 0 0 0 0 0");
    app.release(1);
    app.wait_for("before launch 2");
    let live = s.bpftime(&["map", "dump", "live"]);
    assert_eq!(dumped(&live, "live", "0"), Some(THREADS.to_string()), "cleared, then launch 1\n{live}");
    assert_eq!(dumped(&live, "live", "1"), Some((THREADS * 11).to_string()), "factor 1, then 10\n{live}");
    s.bpftool("update name settings key 0 0 0 0 value 100 0 0 0 0 0 0 0");
    app.release(2);
    let said = app.finish();
    assert!(said.contains("CUDA maps in host memory (the region's own values): settings, live, per_thread"), "{said}");
    let maps = s.bpftime(&["map", "dump", "live"]) + &s.bpftime(&["map", "dump", "copied"]) + &s.bpftime(&["map", "dump", "per_thread"]);
    assert_eq!(dumped(&maps, "live", "0"), Some((THREADS * 2).to_string()), "{maps}");
    assert_eq!(dumped(&maps, "live", "1"), Some((THREADS * 111).to_string()), "factor 1, then 10, then 100\n{maps}");
    assert_eq!(dumped(&maps, "copied", "0"), Some((THREADS * 3).to_string()), "copied back at the synchronisation\n{maps}");
    let per_thread = dumped(&maps, "per_thread", "0").unwrap_or_default();
    assert!(per_thread.ends_with(&format!("(sum {})", THREADS * 3)), "each of the {THREADS} threads entered 3 times: {per_thread}\n{maps}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `bpftime attach PID` with CUDA kernel probes, into an application that has been running
/// without the agent (its driver entry points fetched, its module loaded, one launch done):
/// the launches after it (through the per-thread-stream `cuLaunchKernel` and `cuLaunchKernelEx`)
/// run the probes in the patched copy of the kernel and the app's output does not change;
/// `bpftime detach PID` writes back what they counted and the next launch runs the original.
#[test]
fn probes_reach_the_kernels_of_a_cuda_app_already_running() {
    let Some(dir) = setup("late", &[]) else { return };
    let launches = ["4".to_string(), "4".to_string()];
    let out = Command::new(dir.join("app")).args(&launches).env("LD_LIBRARY_PATH", &dir).output().unwrap();
    let s = Session::new("late");
    let mut app = WaitingApp::plain_with_args(&dir, &launches, &[("BPFTIME_VERBOSE", "1"), ("BPFTIME_CUDA_COPY_MS", "100000000")]);
    app.wait_for("before launch 1");
    let pid = app.pid().to_string();
    let attached = s.bpftime(&["attach", &pid, "--program", build_example("cuda_probes").to_str().unwrap()]);
    app.release_through(1, 2);
    app.wait_for("before launch 3");
    let detached = s.bpftime(&["detach", &pid]);
    // The agent's link follower takes the CUDA hooks out (after writing back what launches 1
    // and 2 counted).
    app.wait_for("bpftime: CUDA probes removed: the application's kernels run as they were");
    app.release(3);
    let (stdout, said) = app.finish_with_output();
    assert_eq!(stdout, text(&out.stdout), "the app's output\n{said}");
    assert!(said.contains("CUDA probes through hooks on the driver"), "{attached}\n{said}");
    assert!(said.contains("CUDA kernel _Z10vector_addPKfS0_Pfi (loaded before its probes came) runs its patched copy"), "{said}");
    assert!(!detached.is_empty());
    let (entries, exits, calls) = probe_calls(&s);
    let two = Some(512.to_string());
    assert_eq!(entries, two, "entries in launches 1 and 2 (256 threads each)\n{calls}\n{attached}\n{said}");
    assert_eq!(exits, two, "exits in launches 1 and 2\n{calls}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Attached to an application of relocatable device code already running: its units load only
/// linked with one another, so the late path leaves them alone (each patched and loaded on its
/// own, a kernel calling another unit's function would fail at launch), and the application
/// runs on as built.
#[test]
fn a_relocatable_app_attached_to_late_runs_on_as_built() {
    let Some(dir) = setup_linked("late-rdc") else { return };
    let launches = [ELEMENTS.to_string(), "3".to_string()];
    let out = Command::new(dir.join("app")).args(&launches).env("LD_LIBRARY_PATH", &dir).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = Session::new("late-rdc");
    let mut app = WaitingApp::plain_with_args(&dir, &launches, &[("BPFTIME_VERBOSE", "1")]);
    app.wait_for("before launch 1");
    let pid = app.pid().to_string();
    let attached = s.bpftime(&["attach", &pid, "--program", build_example("cuda_linked").to_str().unwrap()]);
    app.release_through(1, 2);
    let (stdout, said) = app.finish_with_output();
    assert_eq!(stdout, text(&out.stdout), "the app's output\n{attached}\n{said}");
    assert!(said.contains("no probe names it in the"), "the late path found no module of its own for the kernels\n{said}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Attached to before the application opened its driver: the agent, loaded into the running
/// process, sees none of the `dlsym` calls that find it, so its link follower hooks the driver
/// once it is loaded; the launches after that run the probes.
#[test]
fn probes_reach_a_cuda_app_that_opens_its_driver_after_the_attach() {
    let Some(dir) = setup("late-open", &[]) else { return };
    let base = plain(&dir);
    let s = Session::new("late-open");
    let mut app = WaitingApp::plain(&dir, &[("BPFTIME_VERBOSE", "1"), ("DRIVER_WAIT_OPEN", "1")]);
    app.wait_for("before opening the driver");
    s.bpftime(&["attach", &app.pid().to_string(), "--program", build_example("cuda_probes").to_str().unwrap()]);
    std::fs::write(dir.join("wait/open"), "").unwrap();
    app.wait_for("before launch 1");
    app.wait_for("bpftime: CUDA probes through hooks on the driver");
    app.release_through(1, 2);
    let (stdout, said) = app.finish_with_output();
    assert_eq!(stdout, text(&base.stdout), "the app's output\n{said}");
    let (entries, _, calls) = probe_calls(&s);
    let entries: u64 = entries.and_then(|v| v.parse().ok()).unwrap_or(0);
    // Launch 0 may have come before the hooks or after them.
    assert!(entries == THREADS * 2 || entries == THREADS * 3, "launches 1 and 2 at least: {entries}\n{calls}\n{said}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// CUDA probes loaded into the region after the application started under `bpftime start`
/// (the loader came second): the agent, which had no CUDA probes when the application fetched
/// its driver entry points, hooks the driver then; the launches after that run the probes.
#[test]
fn cuda_probes_loaded_after_the_app_started_reach_its_kernels() {
    let Some(dir) = setup("links-later", &[]) else { return };
    late_probes_count_launches_1_and_2("links-later", &dir);
}

/// Starts the app in `dir` under `bpftime start`, loads `cuda_probes` once it waits before its
/// second launch, and checks that its output is its own and that launches 1 and 2 were counted.
fn late_probes_count_launches_1_and_2(tag: &str, dir: &Path) {
    let base = plain(dir);
    assert!(base.status.success(), "{}", text(&base.stderr));
    let s = Session::new(tag);
    let mut app = WaitingApp::start(&s, dir, &[("BPFTIME_VERBOSE", "1")]);
    app.wait_for("before launch 1");
    s.bpftime(&["load", build_example("cuda_probes").to_str().unwrap()]);
    app.wait_for("bpftime: CUDA probes through hooks on the driver");
    app.release_through(1, 2);
    let (stdout, said) = app.finish_with_output();
    assert_eq!(stdout, text(&base.stdout), "the app's output\n{said}");
    let (entries, exits, calls) = probe_calls(&s);
    let two = Some((THREADS * 2).to_string());
    assert_eq!(entries, two, "entries in launches 1 and 2\n{calls}\n{said}");
    assert_eq!(exits, two, "exits in launches 1 and 2\n{calls}");
    let _ = std::fs::remove_dir_all(dir);
}

/// The same with a kernel that has module variables (globals.cu): the patched copy reads the
/// `__constant__` factor the app writes into the original module before each launch, and its
/// `__device__` count of launches reaches the original's, which the app reads at the end: its
/// output is what it prints without the agent (sum and launch count).
#[test]
fn a_kernel_attached_to_late_sees_its_module_variables() {
    let Some(dir) = setup_app("late-globals", "globals", "driver_globals", &[]) else { return };
    let base = plain(&dir);
    assert!(base.status.success(), "{}", text(&base.stderr));
    let s = Session::new("late-globals");
    let mut app = WaitingApp::plain(&dir, &[("BPFTIME_VERBOSE", "1")]);
    app.wait_for("before launch 1");
    let attached = s.bpftime(&["attach", &app.pid().to_string(), "--program", build_example("cuda_globals").to_str().unwrap()]);
    app.release_through(1, 2);
    let (stdout, said) = app.finish_with_output();
    assert_eq!(stdout, text(&base.stdout), "the app's output\n{said}");
    assert!(said.contains("runs its patched copy (2 variables copied around each launch)"), "{attached}\n{said}");
    let counts = s.bpftime(&["map", "dump", "counts"]);
    let two = (THREADS * 2).to_string();
    assert_eq!(dumped(&counts, "counts", "0").as_deref(), Some(two.as_str()), "entries in launches 1 and 2\n{counts}\n{said}");
    assert_eq!(dumped(&counts, "counts", "1").as_deref(), Some(two.as_str()), "exits in launches 1 and 2\n{counts}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// What `cuda_probes` counted in the session's region: (entries, exits, the dump).
fn probe_calls(s: &Session) -> (Option<String>, Option<String>, String) {
    let calls = s.bpftime(&["map", "dump", "calls"]);
    (dumped(&calls, "calls", "0"), dumped(&calls, "calls", "1"), calls)
}

/// A region of its own for a test, with bpftool to write it through the syscall server.
struct Session {
    shm: String,
    bpftool: PathBuf,
}

impl Session {
    /// A fresh region.
    fn new(tag: &str) -> Session {
        let s = Session { shm: format!("bpftime-cuda-{tag}-{}", std::process::id()), bpftool: PathBuf::from("/usr/sbin/bpftool") };
        bpftime_tests::remove_region(&s.shm);
        s.bpftime(&["shm", "create"]);
        s
    }

    /// A fresh region and bpftool; None (skipped) without bpftool.
    fn with_bpftool(tag: &str) -> Option<Session> {
        if !Path::new("/usr/sbin/bpftool").exists() {
            println!("skipping: no bpftool to write maps (apt install bpftool; bash scripts/setup.sh does)");
            return None;
        }
        Some(Session::new(tag))
    }

    fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_bpftime"));
        c.args(["--shm", &self.shm]);
        c
    }

    /// `bpftime ARGS` on this region, which must succeed: what it said.
    fn bpftime(&self, args: &[&str]) -> String {
        let o = self.command().args(args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}{}", text(&o.stdout), text(&o.stderr));
        text(&o.stdout) + &text(&o.stderr)
    }

    /// `bpftool map ARGS` through the syscall server.
    fn bpftool(&self, args: &str) {
        let mut all = vec!["load", "--", self.bpftool.to_str().unwrap(), "map"];
        all.extend(args.split_whitespace());
        self.bpftime(&all);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        bpftime_tests::remove_region(&self.shm);
    }
}

/// The driver-API vector add under `bpftime start`, waiting before each launch after the
/// first until the test releases it.
struct WaitingApp {
    child: std::process::Child,
    lines: std::io::Lines<BufReader<std::process::ChildStderr>>,
    said: String,
    wait: PathBuf,
}

impl WaitingApp {
    /// Under `bpftime start` on the session's region.
    fn start(s: &Session, dir: &Path, env: &[(&str, &str)]) -> WaitingApp {
        let mut c = s.command();
        c.args(["start", "--"]).arg(dir.join("app")).args(app_args());
        WaitingApp::spawn(c, dir, env)
    }

    /// On its own, without the agent.
    fn plain(dir: &Path, env: &[(&str, &str)]) -> WaitingApp {
        WaitingApp::plain_with_args(dir, &app_args(), env)
    }

    /// On its own with arguments `args`.
    fn plain_with_args(dir: &Path, args: &[String], env: &[(&str, &str)]) -> WaitingApp {
        let mut c = Command::new(dir.join("app"));
        c.args(args);
        WaitingApp::spawn(c, dir, env)
    }

    fn spawn(mut c: Command, dir: &Path, env: &[(&str, &str)]) -> WaitingApp {
        let wait = dir.join("wait");
        std::fs::create_dir_all(&wait).unwrap();
        c.env("LD_LIBRARY_PATH", dir).env("DRIVER_WAIT_DIR", &wait);
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let lines = BufReader::new(child.stderr.take().unwrap()).lines();
        WaitingApp { child, lines, said: String::new(), wait }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads the app's stderr up to a line starting with `what`.
    fn wait_for(&mut self, what: &str) {
        for l in self.lines.by_ref() {
            let l = l.unwrap();
            self.said += &l;
            self.said.push('\n');
            if l.starts_with(what) {
                return;
            }
        }
        panic!("the app never said `{what}`: {}", self.said);
    }

    /// Lets launch `n` go.
    fn release(&self, n: u32) {
        std::fs::write(self.wait.join(n.to_string()), "").unwrap();
    }

    /// Lets launches `from` to `to` go, each once the app waits for it (it waits for `from`).
    fn release_through(&mut self, from: u32, to: u32) {
        for n in from..=to {
            if n > from {
                self.wait_for(&format!("before launch {n}"));
            }
            self.release(n);
        }
    }

    /// Waits for the app to succeed; everything it said on stderr.
    fn finish(self) -> String {
        self.finish_with_output().1
    }

    /// Waits for the app to succeed; what it printed, and everything it said on stderr.
    fn finish_with_output(mut self) -> (String, String) {
        use std::io::Read;
        for l in self.lines.by_ref() {
            self.said += &l.unwrap();
            self.said.push('\n');
        }
        let mut out = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            o.read_to_string(&mut out).unwrap();
        }
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{}", self.said);
        (out, std::mem::take(&mut self.said))
    }
}

impl Drop for WaitingApp {
    /// A test that failed midway leaves no app waiting forever.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// bpftime's `bpf_cuda_exit` (507) in a kernel probe ends the GPU thread, as under bpftime:
/// with blocks 2 and 3 ended at the entry, only elements 0..512 are computed (the app's sum
/// says so), every thread enters, and only blocks 0 and 1 reach the exit probe.
#[test]
fn bpftime_exit_in_a_probe_ends_the_gpu_thread() {
    let Some(dir) = setup("exit", &[]) else { return };
    let out = traced(&dir, &build_example("cuda_exit_blocks"), &[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    let computed: u64 = (0..512).map(|i| 3 * i).sum();
    assert!(stdout.contains(&format!("sum {computed}")), "only blocks 0 and 1 computed\n{stdout}{stderr}");
    assert_eq!(dumped(&stderr, "threads", "0"), Some((THREADS * LAUNCHES as u64).to_string()), "every thread entered\n{stderr}");
    assert_eq!(dumped(&stderr, "threads", "1"), Some((512 * LAUNCHES as u64).to_string()), "blocks 0 and 1 finished\n{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A CPU program and a GPU program both writing an array, a per-CPU array, a hash and a ring
/// buffer: what each wrote reaches the host's maps (the GPU's entries are copied back, the
/// host's pushed before each launch; per-SM additions added; records of both in the ring).
#[test]
fn cpu_and_gpu_programs_both_write_shared_maps() {
    let Some(dir) = setup("both", &[]) else { return };
    // Copies back after every launch (an interpreted launch takes longer than the interval),
    // and none until the app synchronises, as with a GPU running launches back to back: the
    // hash the CPU changes before each launch is merged in stream order, not overwritten.
    for copies in ["50", "1000000"] {
        let out = traced(&dir, &build_example("cuda_shared_counts"), &[("BPFTIME_CUDA_COPY_MS", copies)]);
        shared_maps_hold_both_sides_writes(&text(&out.stderr), out.status.success());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `cuda_shared_counts`'s maps in `bpftime run`'s output hold what the CPU and the GPU wrote.
fn shared_maps_hold_both_sides_writes(stderr: &str, ok: bool) {
    assert!(ok, "{stderr}");
    assert_eq!(dumped(stderr, "counts", "0"), Some((THREADS * LAUNCHES as u64).to_string()), "the GPU's count\n{stderr}");
    assert_eq!(dumped(stderr, "counts", "1"), Some(LAUNCHES.to_string()), "the CPU's count\n{stderr}");
    let both = THREADS * LAUNCHES as u64 + LAUNCHES as u64;
    assert!(dumped_section(stderr, "per_cpu").contains(&format!("(sum {both})")), "per-CPU: the GPU's per-SM additions and the CPU's\n{stderr}");
    let blocks = THREADS / 256;
    for b in 0..blocks {
        assert_eq!(dumped(stderr, "seen", &b.to_string()), Some((256 * LAUNCHES as u64).to_string()), "hash entry the GPU made, block {b}\n{stderr}");
    }
    for l in 0..LAUNCHES {
        assert_eq!(dumped(stderr, "seen", &(1000 + l).to_string()), Some("1".to_string()), "hash entry the CPU made, launch {l}\n{stderr}");
    }
    let records: Vec<&str> = stderr.lines().filter_map(|l| l.strip_prefix("ringbuf `events`: 8 bytes: ")).collect();
    assert_eq!(records.iter().filter(|r| r.starts_with("01 ")).count(), LAUNCHES as usize, "the CPU's records\n{stderr}");
    assert_eq!(records.iter().filter(|r| r.starts_with("02 ")).count() as u64, blocks * LAUNCHES as u64, "the GPU's records\n{stderr}");
}

/// Kernels shaped as real applications' are (`examples/cuda/kernel_shapes.cu`): probes name
/// a template by its bare name, a kernel by its namespace-qualified name and one in an
/// anonymous namespace by its bare name; parameters of 1 and 2 bytes and structs by value
/// reach the context (zero-extended; a struct's first 8 bytes); threads that end with inline
/// assembly's `exit` run the exit probe as those that return do. The app's output unchanged.
#[test]
fn probes_find_kernels_by_their_names_and_read_every_parameter() {
    let Some(dir) = setup_app("shapes", "kernel_shapes", "driver_shapes", &[]) else { return };
    let obj = build_example("cuda_kernel_shapes");
    let plain = Command::new(dir.join("app")).env("LD_LIBRARY_PATH", &dir).output().unwrap();
    assert_eq!(text(&plain.stdout), "kernel_shapes: shapes sum 2440432, p sum 192\n", "{}", text(&plain.stderr));
    let out = traced_with_args(&dir, &obj, &[], &[]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(out.stdout, plain.stdout, "the app's output");
    let want = [("0", "253"), ("1", "1"), ("2", "65236"), ("3", "673059850"), ("4", "500"), ("5", "300647710726000")];
    for (k, v) in want {
        assert_eq!(dumped(&stderr, "params", k).as_deref(), Some(v), "parameter {k} of shapes\n{stderr}");
    }
    assert!(dumped(&stderr, "params", "6").is_some_and(|p| p != "0"), "the output pointer\n{stderr}");
    for (k, what) in
        [("0", "scaled<5> by its bare name"), ("1", "shapes_ns::named"), ("3", "odd_threads_exit's entries"), ("4", "odd_threads_exit's returns and exits")]
    {
        assert_eq!(dumped(&stderr, "entries", k).as_deref(), Some("32"), "{what}\n{stderr}");
    }
    // `hidden` (anonymous namespace) is not launched by the harness; it is spliced, and ptxas
    // takes the module.
    let patched = dir.join("patched");
    let report = Command::new(env!("CARGO_BIN_EXE_bpftime"))
        .args(["cuda", "patch"])
        .arg(&obj)
        .arg(dir.join("kernel_shapes.fatbin"))
        .arg("-o")
        .arg(&patched)
        .output()
        .unwrap();
    let report = text(&report.stdout) + &text(&report.stderr);
    assert!(report.contains("probe `hidden_entry` at the entry of _ZN") && report.contains("(anonymous namespace)::hidden(int*)"), "{report}");
    assert!(!report.contains("no such kernel"), "{report}");
    if let Some(ptxas) = bpftime_tests::cuda_tools::ptxas_or_skip("the patched kernel shapes") {
        for f in std::fs::read_dir(&patched).unwrap() {
            let o = Command::new(&ptxas).args(["-arch=sm_75", "-o", "/dev/null"]).arg(f.unwrap().path()).output().unwrap();
            assert!(o.status.success(), "ptxas: {}", text(&o.stderr));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The map section `name` of `bpftime run`'s dump.
fn dumped_section<'a>(out: &'a str, name: &str) -> &'a str {
    let Some(start) = out.find(&format!("`{name}`")) else { return "" };
    let rest = &out[start..];
    &rest[..rest[1..].find("\nmap ").map_or(rest.len(), |e| e + 1)]
}

/// Start times kept the way CPU tools keep them (a hash keyed by thread, inserted at entry,
/// deleted at exit) over many launches: every launch inserts and deletes every key again, and
/// the table never runs out of room (deleted entries are reused), and the deletes reach the
/// host (the hash is empty after the run, as it is on the device).
#[test]
fn gpu_hash_entries_deleted_and_inserted_again_every_launch() {
    let Some(dir) = setup("reinsert", &[]) else { return };
    let launches = 8u64;
    let args = [ELEMENTS.to_string(), launches.to_string()];
    let out = traced_with_args(&dir, &build_example("cuda_thread_times"), &[], &args);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(dumped(&stderr, "outcome", "0"), Some((THREADS * launches).to_string()), "every thread's duration, every launch\n{stderr}");
    // All-zero values are not shown.
    assert_eq!(dumped(&stderr, "outcome", "1"), None, "starts not stored\n{stderr}");
    assert_eq!(dumped(&stderr, "outcome", "2"), None, "exits without a start\n{stderr}");
    assert!(dumped_section(&stderr, "start").contains("(0 entries)"), "every start was deleted on the GPU: the host's hash is empty too\n{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs libbpf loader `loader` (`attach_all` style: `OBJ ARGS...`, says "attached N", reads
/// its maps after a line on stdin) on example `obj` under `bpftime load`, checks it attached
/// `links` programs, runs the vector add under `bpftime start` (its output its own), then has
/// the loader read its maps. Returns what the loader printed then and the trace pipe.
fn unmodified_loader_session(tag: &str, loader: &str, obj: &str, args: &[&str], links: usize) -> Option<(String, String)> {
    let dir = setup(tag, &[])?;
    let shm = format!("bpftime-cuda-{tag}-{}", std::process::id());
    bpftime_tests::remove_region(&shm);
    let bpftime = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_bpftime"));
        c.args(["--shm", &shm]);
        c
    };
    let mut loader = bpftime()
        .args(["load", "--"])
        .arg(build_loader(loader))
        .arg(build_example(obj))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(loader.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    if first != format!("attached {links}\n") {
        let o = loader.wait_with_output().unwrap();
        panic!("the loader did not attach: {first}{}", text(&o.stderr));
    }
    let listed = bpftime().args(["link", "list"]).output().unwrap();
    let listed = text(&listed.stdout);
    assert_eq!(listed.matches(": cuda kernel e").count(), links, "{listed}");
    let app = bpftime()
        .args(["start", "--"])
        .arg(dir.join("app"))
        .args(app_args())
        .env("LD_LIBRARY_PATH", &dir)
        .env("BPFTIME_FAKE_CUDA_DIR", dir.join("log"))
        .output()
        .unwrap();
    assert!(app.status.success(), "{}", text(&app.stderr));
    assert_eq!(app.stdout, plain(&dir).stdout, "the app's output is its own");
    loader.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let o = loader.wait_with_output().unwrap();
    assert!(o.status.success(), "loader: {rest}{}", text(&o.stderr));
    let trace = bpftime().args(["trace", "--no-follow"]).output().unwrap();
    bpftime_tests::remove_region(&shm);
    let _ = std::fs::remove_dir_all(&dir);
    Some((rest, text(&trace.stdout)))
}

/// bpftime's own workflow for GPU probes: an unmodified libbpf loader under the syscall server
/// (`bpftime load`) attaches `kprobe/KERNEL` programs written as bpftime's GPU examples are
/// (vmlinux.h, helpers 501-505 by id, `bpf_printk`) with plain `bpf_program__attach`, which
/// opens kprobe perf events (through a stand-in kprobe PMU where the kernel has none); the
/// app started with `bpftime start` runs them in its kernels, and the loader reads the counts
/// from its own map fds while the messages reach the trace pipe.
#[test]
fn an_unmodified_libbpf_loader_attaches_gpu_probes() {
    let Some((rest, trace)) = unmodified_loader_session("loader", "attach_all", "cuda_counter", &[], 2) else { return };
    let value = |prefix: &str| -> Vec<u64> { rest.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(" = ").next()?.parse().ok()).collect() };
    let total = THREADS * LAUNCHES as u64;
    assert_eq!(value("entries["), vec![total], "one entry per thread, one key (the app's pid)\n{rest}");
    assert_eq!(value("exits["), vec![total], "{rest}");
    assert_eq!(value("block_threads["), vec![256 * LAUNCHES as u64; THREADS as usize / 256], "every block's threads\n{rest}");
    assert_eq!(value("firsts[0]"), vec![THREADS / 256 * LAUNCHES as u64], "thread x 0 of each block: the u64 ids are whole\n{rest}");
    assert_eq!(value("firsts[1]"), vec![1], "{rest}");
    assert!(rest.contains(&format!("thread_exits[0] = {total} ({THREADS} threads)\n")), "each thread counted its exits in its own slot\n{rest}");
    assert_eq!(trace.matches("bpf_trace_printk: vector_add: block 0 entered").count(), LAUNCHES as usize, "puts (501) once per launch\n{trace}");
    for block in 0..THREADS / 256 {
        let line = format!("bpf_trace_printk: vector_add: block {block} thread 0 exits");
        assert_eq!(trace.matches(&line).count(), LAUNCHES as usize, "bpf_printk from the exit probe\n{trace}");
    }
}

/// A GPU probe's ring buffer and perf buffer records reach an unmodified libbpf loader's
/// `ring_buffer` and `perf_buffer` (through the syscall server's ring mapping and its per-CPU
/// perf events): one record per block per launch, with the block.
#[test]
fn an_unmodified_libbpf_loader_reads_gpu_ring_and_perf_buffer_records() {
    let blocks = THREADS / 256;
    let block_sum: u64 = (0..blocks).sum::<u64>() * LAUNCHES as u64;
    let Some((rest, _)) = unmodified_loader_session("ring", "attach_all", "cuda_events", &[], 1) else { return };
    assert!(rest.contains(&format!("events: {} records of 24 bytes, first u32 sum {block_sum}\n", blocks * LAUNCHES as u64)), "{rest}");
    let Some((rest, _)) = unmodified_loader_session("perf", "attach_all", "cuda_ring_records", &[], 1) else { return };
    // 16-byte records arrive as 20 bytes: the raw sample padded as the kernel pads it.
    assert!(rest.contains(&format!("perf_records: {} records of 20 bytes, first u32 sum {block_sum}\n", blocks * LAUNCHES as u64)), "{rest}");
}

/// bpftime's way of reading a GPU ring: a 1527 map declared with a key, a record-sized value
/// and records per thread, written with `bpf_perf_event_output`, polled by the loader through
/// `bpftime_syscall_server__poll_gpu_ringbuf_map` (found with dlsym, as bpftime's GPU examples
/// find it): every record, in order of blocks' returns.
#[test]
fn a_loader_polls_a_gpu_ring_the_bpftime_way() {
    let Some((rest, _)) = unmodified_loader_session("poll", "gpu_ring_poll", "cuda_ring_records", &["records"], 1) else { return };
    let blocks = THREADS / 256;
    let block_sum: u64 = (0..blocks).sum::<u64>() * LAUNCHES as u64;
    assert!(rest.contains(&format!("records: {} records of 16 bytes, first u32 sum {block_sum}\n", blocks * LAUNCHES as u64)), "{rest}");
}

/// Contexts torn down and made again (examples/cuda/driver_contexts.c: the primary context
/// retained twice, launched in around a first release and released again, made again and
/// reset, then a context of the app's own destroyed with its launches unsynchronised; the
/// driver reuses handles and addresses): every launch of the rounds is counted once, nothing
/// kept for a context outlives it, the app's output is its own, and there are three teardowns
/// (a release that is not the last leaves the context alone: it was taken for one, four). Also with launches run at the next synchronisation, as a GPU
/// runs them.
#[test]
fn contexts_torn_down_and_made_again_keep_counts_exact() {
    let Some(dir) = setup_app("contexts", "vector_add", "driver_contexts", &[]) else { return };
    let base = plain(&dir);
    assert!(base.status.success(), "{}", text(&base.stderr));
    assert_eq!(text(&base.stdout).lines().count(), 4, "{}", text(&base.stdout));
    for asynchronous in [false, true] {
        let env: &[(&str, &str)] = if asynchronous { &[("BPFTIME_FAKE_CUDA_ASYNC", "1")] } else { &[] };
        let env = [env, &[("BPFTIME_VERBOSE", "1")]].concat();
        let out = traced(&dir, &build_example("cuda_probes"), &env);
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert_eq!(text(&out.stdout), text(&base.stdout), "the app's output\n{stderr}");
        assert_eq!(stderr.matches("CUDA context torn down").count(), 3, "{stderr}");
        let total = (THREADS * LAUNCHES as u64 * 4).to_string();
        assert_eq!(dumped(&stderr, "calls", "0"), Some(total.clone()), "entries of every round (async {asynchronous})\n{stderr}");
        assert_eq!(dumped(&stderr, "calls", "1"), Some(total), "exits of every round (async {asynchronous})\n{stderr}");
        assert!(!stderr.contains("CUDA maps are not copied back"), "{stderr}");
        let log = std::fs::read_to_string(dir.join("log/log")).unwrap();
        assert_eq!(log.matches("context 1 destroyed").count(), 2, "{log}");
        assert_eq!(log.matches("launch failed").count(), 0, "{log}");
        let _ = std::fs::remove_file(dir.join("log/log"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A load with JIT log options (examples/cuda/driver_jit_log.c, `cuModuleLoadDataEx` and
/// `cuLibraryLoadData`): the driver writes its logs and sets their sizes to the bytes written.
/// When the driver refuses the patched image, the original is loaded with the options as the
/// app gave them (buffers and sizes), so the app sees the original's logs only; when it takes
/// the patched one, the app's output is the same and every launch is counted.
#[test]
fn jit_logs_of_a_refused_patched_image_never_reach_the_app() {
    let Some(dir) = setup_app("jitlog", "vector_add", "driver_jit_log", &[]) else { return };
    let args = [ELEMENTS.to_string()];
    let base = Command::new(dir.join("app")).args(&args).env("LD_LIBRARY_PATH", &dir).output().unwrap();
    assert!(base.status.success(), "{}", text(&base.stderr));
    let expected = text(&base.stdout);
    assert_eq!(expected.matches("info log 32 bytes \"info: module").count(), 2, "{expected}");
    for reject in ["bpftime_arena", ""] {
        let out = traced_with_args(&dir, &build_example("cuda_probes"), &[("BPFTIME_FAKE_CUDA_REJECT", reject)], &args);
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert_eq!(text(&out.stdout), expected, "the app's output (patched image refused: {})\n{stderr}", !reject.is_empty());
        let counted = if reject.is_empty() { Some((THREADS * 2).to_string()) } else { None };
        assert_eq!(dumped(&stderr, "calls", "0").filter(|v| v != "0"), counted, "{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
