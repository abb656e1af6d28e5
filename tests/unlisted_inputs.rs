//! End-to-end tests of the inputs a compile reads that no dependency output lists (the
//! `.incbin` class; docs/ARCHITECTURE.md, "Inputs no dependency output lists"), with real gcc
//! and clang in every key mode. Each one is either refused (compiled every time, its label
//! counted in `stats`) or keyed (changing it misses and gives the object the compiler gives).
//! The oracle (a script logging each real compile) decides hit or miss.

mod common;

use std::ffi::OsString;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use common::{MODES, Sandbox, assert_ok, have_tool};

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn stats(sb: &Sandbox) -> distc::stats::Stats {
    distc::stats::Stats::read_all(&sb.distc_dir).unwrap()
}

/// `distc ARGS…` in one key mode, with `env` set on top of the sandbox's.
fn distc(sb: &Sandbox, mode: &str, env: &[(&str, OsString)], args: &[&str]) -> Output {
    let (_, direct, depend) = MODES.iter().find(|m| m.0 == mode).unwrap();
    let mut cmd = sb.distc();
    cmd.env("DISTC_DIRECT_MODE", direct)
        .env("DISTC_DEPEND_MODE", depend)
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run distc")
}

/// The same compile without distc, for the object (and streams) the compiler itself gives.
fn reference(sb: &Sandbox, env: &[(&str, OsString)], args: &[&str]) -> Output {
    let mut cmd = Command::new(args[0]);
    cmd.current_dir(&sb.work).args(&args[1..]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert_ok(&out, "reference compile");
    out
}

/// The compilers to run a test with: gcc, and clang where installed.
fn compilers() -> Vec<&'static str> {
    let mut c = vec!["gcc"];
    if have_tool("clang") {
        c.push("clang");
    }
    c
}

fn sandbox_for(compiler: &str) -> Sandbox {
    let sb = Sandbox::new();
    if compiler != "gcc" {
        sb.add_oracle(compiler, compiler);
    }
    sb
}

/// Inline assembly embedding `blob.bin` as the symbol `blob`.
const INCBIN_ASM: &str = "__asm__(\".section .rodata\\n.global blob\\nblob:\\n\
                          .incbin \\\"blob.bin\\\"\\n.previous\\n\");\n";

/// Three rounds of: new contents in `data_file`, compile through distc, the object holds them.
/// Every round compiles for real and counts one `label` refusal; nothing is stored.
fn every_change_reaches_the_object(
    sb: &Sandbox,
    mode: &str,
    data_file: &str,
    data: impl Fn(&str) -> String,
    args: &[&str],
    object: &str,
    label: &str,
) {
    let before = sb.compiles();
    for round in 0..3 {
        let marker = format!("DATA-{round}-{mode}-{}", args[0]);
        sb.write(data_file, data(&marker));
        assert_ok(&distc(sb, mode, &[], args), mode);
        assert!(
            contains(&sb.read(object), marker.as_bytes()),
            "{mode} {args:?}: round {round}: the object lacks the new data"
        );
    }
    assert_eq!(
        sb.compiles() - before,
        3,
        "{mode} {args:?}: compiled every time"
    );
    let s = stats(sb);
    assert_eq!(s.uncacheable.get(label), Some(&3), "{mode} {args:?}: {s:?}");
    assert_eq!(s.hits + s.misses, 0, "{mode} {args:?}: {s:?}");
}

#[test]
fn incbin_in_a_c_source_is_refused() {
    for cc in compilers() {
        for (mode, ..) in MODES {
            let sb = sandbox_for(cc);
            sb.write(
                "a.c",
                format!("{INCBIN_ASM}int main(void) {{ return 0; }}\n"),
            );
            every_change_reaches_the_object(
                &sb,
                mode,
                "blob.bin",
                |m| m.to_string(),
                &[cc, "-c", "a.c", "-o", "a.o"],
                "a.o",
                "incbin",
            );
        }
    }
}

#[test]
fn incbin_in_an_included_header_is_refused() {
    for cc in compilers() {
        for (mode, ..) in MODES {
            let sb = sandbox_for(cc);
            // Through a macro, as incbin-style helper headers do: the directive is spelt in the
            // header, the file named in the source.
            sb.write(
                "inc/embed.h",
                "#define EMBED(name, file) __asm__(\".section .rodata\\n.global \" #name \
                 \"\\n\" #name \":\\n.IncBin \\\"\" file \"\\\"\\n.previous\\n\")\n",
            );
            sb.write("a.c", "#include \"embed.h\"\nEMBED(blob, \"blob.bin\");\n");
            every_change_reaches_the_object(
                &sb,
                mode,
                "blob.bin",
                |m| m.to_string(),
                &[cc, "-Iinc", "-MD", "-c", "a.c", "-o", "a.o"],
                "a.o",
                "incbin",
            );
        }
    }
}

/// Direct mode must not trust a manifest recorded before a header gained an `.incbin`.
#[test]
fn a_header_gaining_incbin_after_a_manifest_was_recorded_is_refused() {
    for cc in compilers() {
        for (mode, ..) in MODES {
            let sb = sandbox_for(cc);
            sb.write("h.h", "#define V 1\n");
            sb.write("a.c", "#include \"h.h\"\nint v = V;\n");
            let args = [cc, "-c", "a.c", "-o", "a.o"];
            assert_ok(&distc(&sb, mode, &[], &args), mode);
            assert_ok(&distc(&sb, mode, &[], &args), mode);
            assert_eq!(sb.compiles(), 1, "{mode} {cc}: the second compile is a hit");
            assert_eq!(stats(&sb).hits, 1, "{mode} {cc}");
            sb.write("h.h", format!("#define V 1\n{INCBIN_ASM}"));
            let before = sb.compiles();
            for round in 0..3 {
                let marker = format!("HDR-{round}-{mode}-{cc}");
                sb.write("blob.bin", &marker);
                assert_ok(&distc(&sb, mode, &[], &args), mode);
                assert!(
                    contains(&sb.read("a.o"), marker.as_bytes()),
                    "{mode} {cc}: round {round}: stale object"
                );
            }
            assert_eq!(sb.compiles() - before, 3, "{mode} {cc}");
            assert_eq!(stats(&sb).uncacheable.get("incbin"), Some(&3), "{mode}");
        }
    }
}

#[test]
fn incbin_in_assembler_sources_is_refused() {
    for cc in compilers() {
        for (mode, ..) in MODES {
            let sb = sandbox_for(cc);
            // `.S` goes through the preprocessor; `.s` does not. Directive names are
            // case-insensitive to the assembler.
            sb.write(
                "a.S",
                "#define SECTION .section .rodata\nSECTION\n.global blob\nblob:\n\
                 .incbin \"blob.bin\"\n",
            );
            every_change_reaches_the_object(
                &sb,
                mode,
                "blob.bin",
                |m| m.to_string(),
                &[cc, "-c", "a.S", "-o", "a.o"],
                "a.o",
                "incbin",
            );
            let sb = sandbox_for(cc);
            sb.write(
                "b.s",
                ".section .rodata\n.global blob2\nblob2:\n.INCBIN \"blob.bin\"\n",
            );
            every_change_reaches_the_object(
                &sb,
                mode,
                "blob.bin",
                |m| m.to_string(),
                &[cc, "-c", "b.s", "-o", "b.o"],
                "b.o",
                "incbin",
            );
        }
    }
}

/// The assembler's `.include` reads a file the preprocessor never sees: same class.
#[test]
fn assembler_include_is_refused() {
    for cc in compilers() {
        for (mode, ..) in MODES {
            for (src, text) in [
                ("a.s", ".include \"part.inc\"\n"),
                ("b.S", "#define P \"part.inc\"\n.include P\n"),
                ("c.c", "__asm__(\".include \\\"part.inc\\\"\");\n"),
            ] {
                let sb = sandbox_for(cc);
                sb.write(src, text);
                every_change_reaches_the_object(
                    &sb,
                    mode,
                    "part.inc",
                    |m| format!(".section .rodata\n.ascii \"{m}\"\n"),
                    &[cc, "-c", src, "-o", "x.o"],
                    "x.o",
                    "asm-include",
                );
            }
        }
    }
}

/// A C file that merely talks about assembler directives in a comment-free way stays
/// cacheable: the refusal is about the directive, not about any dot.
#[test]
fn ordinary_sources_stay_cacheable() {
    let sb = Sandbox::new();
    sb.write(
        "a.c",
        "struct s { int include; int inc; };\nint f(struct s *p) { return p->include + p->inc; }\n\
         double d = 1.5;\n",
    );
    for (mode, ..) in MODES {
        assert_ok(&distc(&sb, mode, &[], &["gcc", "-c", "a.c"]), mode);
    }
    let s = stats(&sb);
    assert!(s.uncacheable.is_empty(), "{s:?}");
    assert_eq!(sb.compiles(), 1, "one miss, then hits in every mode");
}

// ---------------------------------------------------------------------------------------------
// Keyed inputs: changing one misses and gives the object (and streams) the compiler gives.

/// Compiles `args` through distc with each environment in turn (in every mode), checking that
/// each new one misses, that each result equals the compiler's own, and that repeating the
/// first is a hit.
fn each_value_misses(
    sb_for: impl Fn() -> Sandbox,
    prepare: impl Fn(&Sandbox, usize),
    envs: &[Vec<(&str, OsString)>],
    args: &[&str],
    object: &str,
) {
    for (mode, ..) in MODES {
        let sb = sb_for();
        let mut first = Vec::new();
        for (i, env) in envs.iter().enumerate() {
            prepare(&sb, i);
            let want = reference(&sb, env, args);
            let want_obj = sb.read(object);
            fs::remove_file(sb.work.join(object)).unwrap();
            let got = distc(&sb, mode, env, args);
            assert_ok(&got, mode);
            assert_eq!(sb.compiles(), i + 1, "{mode} {args:?} {env:?}: a miss");
            assert_eq!(sb.read(object), want_obj, "{mode} {env:?}: the object");
            assert_eq!(got.stderr, want.stderr, "{mode} {env:?}: the diagnostics");
            if i == 0 {
                first = want_obj;
            }
        }
        prepare(&sb, 0);
        assert_ok(&distc(&sb, mode, &envs[0], args), mode);
        assert_eq!(sb.compiles(), envs.len(), "{mode} {args:?}: a hit again");
        assert_eq!(sb.read(object), first, "{mode}: the first object again");
    }
}

fn os(s: impl Into<OsString>) -> OsString {
    s.into()
}

#[test]
fn sanitizer_ignore_list_contents_are_keyed() {
    if !have_tool("clang") {
        eprintln!("clang not installed: skipped");
        return;
    }
    for flag in [
        "-fsanitize-ignorelist=ign.txt",
        "-fsanitize-blacklist=ign.txt",
    ] {
        let lists = ["", "fun:f\n", "src:a.c\n"];
        each_value_misses(
            || {
                let sb = sandbox_for("clang");
                sb.write(
                    "a.c",
                    "int f(int *p) { return *p; }\nint g(int *p) { return *p; }\n",
                );
                sb
            },
            |sb, i| sb.write("ign.txt", lists[i]),
            &[vec![], vec![], vec![]],
            &[
                "clang",
                "-fsanitize=address",
                flag,
                "-c",
                "a.c",
                "-o",
                "a.o",
            ],
            "a.o",
        );
    }
}

#[test]
fn apparent_working_directory_is_keyed_with_debug_info() {
    // gcc and clang record $PWD, not getcwd(), as the compile directory when both name the same
    // directory (a symlinked path to the build tree).
    for cc in compilers() {
        for (mode, ..) in MODES {
            let sb = sandbox_for(cc);
            sb.write("a.c", "int x;\n");
            let link = sb.root.path().join("link");
            std::os::unix::fs::symlink(&sb.work, &link).unwrap();
            let args = [cc, "-g", "-c", "a.c", "-o", "a.o"];
            for (i, pwd) in [link.as_path(), sb.work.as_path()].iter().enumerate() {
                let env = [("PWD", os(pwd.as_os_str()))];
                reference(&sb, &env, &args);
                let want = sb.read("a.o");
                assert_eq!(
                    contains(&want, link.as_os_str().as_encoded_bytes()),
                    i == 0,
                    "{cc}: the compiler records $PWD"
                );
                fs::remove_file(sb.work.join("a.o")).unwrap();
                assert_ok(&distc(&sb, mode, &env, &args), mode);
                assert_eq!(sb.compiles(), i + 1, "{mode} {cc} PWD={pwd:?}: a miss");
                assert_eq!(sb.read("a.o"), want, "{mode} {cc} PWD={pwd:?}");
            }
        }
    }
}

#[test]
fn diagnostics_environment_is_keyed() {
    // A warning with a fix-it hint, in colour when asked.
    let src = "#include <stdio.h>\nint g(void) { return prinft(\"x\"); }\n";
    let args = [
        "gcc",
        "-fdiagnostics-color=always",
        "-c",
        "a.c",
        "-o",
        "a.o",
    ];
    let cases: [(&str, [&str; 2]); 4] = [
        ("GCC_EXTRA_DIAGNOSTIC_OUTPUT", ["fixits-v2", "fixits-v1"]),
        ("GCC_COLORS", ["warning=01;32", "warning=01;36"]),
        ("LANGUAGE", ["de", "fr"]),
        ("GCC_COMPARE_DEBUG", ["1", "-gtoggle"]),
    ];
    for (var, values) in cases {
        let envs = [
            vec![],
            vec![(var, os(values[0]))],
            vec![(var, os(values[1]))],
        ];
        each_value_misses(
            || {
                let sb = Sandbox::new();
                sb.write("a.c", src);
                sb
            },
            |_, _| {},
            &envs,
            &args,
            "a.o",
        );
    }
}

#[test]
fn include_path_environment_is_keyed() {
    for (var, src, cc) in [
        ("C_INCLUDE_PATH", "a.c", "gcc"),
        ("CPLUS_INCLUDE_PATH", "a.cc", "g++"),
    ] {
        each_value_misses(
            || {
                let sb = Sandbox::new();
                sb.write(src, "#include \"h.h\"\nint x = X;\n");
                sb.write("i1/h.h", "#define X 1\n");
                sb.write("i2/h.h", "#define X 2\n");
                sb
            },
            |_, _| {},
            &[vec![(var, os("i1"))], vec![(var, os("i2"))]],
            &[cc, "-c", src, "-o", "a.o"],
            "a.o",
        );
    }
}

#[test]
fn clang_override_options_are_keyed() {
    if !have_tool("clang") {
        eprintln!("clang not installed: skipped");
        return;
    }
    each_value_misses(
        || {
            let sb = sandbox_for("clang");
            sb.write("a.c", "int v = X;\n");
            sb
        },
        |_, _| {},
        &[
            vec![("CCC_OVERRIDE_OPTIONS", os("#+-DX=2"))],
            vec![("CCC_OVERRIDE_OPTIONS", os("#+-DX=3"))],
        ],
        &["clang", "-DX=1", "-c", "a.c", "-o", "a.o"],
        "a.o",
    );
}

#[test]
fn source_date_epoch_is_keyed() {
    each_value_misses(
        || {
            let sb = Sandbox::new();
            sb.write("a.c", "const char *d = __DATE__;\n");
            sb
        },
        |_, _| {},
        &[
            vec![("SOURCE_DATE_EPOCH", os("0"))],
            vec![("SOURCE_DATE_EPOCH", os("1000000000"))],
        ],
        &["gcc", "-c", "a.c", "-o", "a.o"],
        "a.o",
    );
}

/// A header in a `--sysroot` tree is a header like any other: listed, keyed, probed.
#[test]
fn sysroot_headers_are_keyed() {
    for (mode, ..) in MODES {
        let sb = Sandbox::new();
        sb.write("a.c", "#include <v.h>\nint x = V;\n");
        sb.write("sr/usr/include/v.h", "#define V 1\n");
        let args = ["gcc", "--sysroot=sr", "-c", "a.c", "-o", "a.o"];
        let mut objects = Vec::new();
        for (i, step) in ["first", "edited", "shadowed"].iter().enumerate() {
            match *step {
                "edited" => sb.write("sr/usr/include/v.h", "#define V 2\n"),
                // Searched before /usr/include: a new header there shadows the old one.
                "shadowed" => sb.write("sr/usr/local/include/v.h", "#define V 3\n"),
                _ => {}
            }
            reference(&sb, &[], &args);
            let want = sb.read("a.o");
            fs::remove_file(sb.work.join("a.o")).unwrap();
            assert_ok(&distc(&sb, mode, &[], &args), mode);
            assert_eq!(sb.compiles(), i + 1, "{mode} {step}: a miss");
            assert_eq!(sb.read("a.o"), want, "{mode} {step}");
            objects.push(want);
        }
        assert_ne!(objects[0], objects[1]);
        assert_ne!(objects[1], objects[2]);
    }
}

/// `COMPILER_PATH` (like `-B` and `GCC_EXEC_PREFIX`) picks the compiler's own programs, whose
/// contents distc does not hash: refused, so a changed assembler there is always used.
#[test]
fn compiler_path_environment_is_refused() {
    for cc in compilers() {
        for (mode, ..) in MODES {
            let sb = sandbox_for(cc);
            sb.write("a.c", "int x;\n");
            let tools = sb.root.path().join("tools");
            fs::create_dir_all(&tools).unwrap();
            let as_path = common::which("as").unwrap();
            let env = [("COMPILER_PATH", os(tools.as_os_str()))];
            let mut args = vec![cc, "-c", "a.c", "-o", "a.o"];
            if cc == "clang" {
                args.insert(1, "-no-integrated-as");
            }
            for round in 0..3 {
                let marker = format!("marker_{round}");
                let script = tools.join("as");
                fs::write(
                    &script,
                    format!(
                        "#!/bin/sh\nexec '{}' --defsym {marker}=1 \"$@\"\n",
                        as_path.display()
                    ),
                )
                .unwrap();
                set_executable(&script);
                assert_ok(&distc(&sb, mode, &env, &args), mode);
                assert!(
                    contains(&sb.read("a.o"), marker.as_bytes()),
                    "{mode} {cc}: round {round}: the new assembler ran"
                );
            }
            assert_eq!(sb.compiles(), 3, "{mode} {cc}");
            let s = stats(&sb);
            assert_eq!(s.uncacheable.get("compiler-path"), Some(&3), "{s:?}");
        }
    }
}

fn set_executable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Inputs refused by option: each compile runs the real compiler and counts its label.
#[test]
fn file_reading_options_are_refused_with_their_label() {
    let sb = Sandbox::new();
    sb.write("a.c", "int x;\n");
    sb.write("prof.afdo", "");
    sb.write("s.specs", "");
    for (flag, label) in [
        ("-fprofile-use", "profile-use"),
        ("-fbranch-probabilities", "profile-use"),
        ("-fauto-profile=prof.afdo", "profile-use"),
        ("-fplugin=./none.so", "plugin"),
        ("-specs=s.specs", "specs-file"),
        ("-B.", "compiler-path"),
    ] {
        // The compiler may reject the empty data files; the refusal comes first either way.
        let before = stats(&sb).uncacheable.get(label).copied().unwrap_or(0);
        distc(&sb, "direct", &[], &["gcc", flag, "-c", "a.c", "-o", "a.o"]);
        let s = stats(&sb);
        assert_eq!(
            s.uncacheable.get(label),
            Some(&(before + 1)),
            "{flag}: {s:?}"
        );
    }
    let s = stats(&sb);
    assert_eq!(s.hits + s.misses, 0, "{s:?}");
}

/// `__has_include` of a file that does not exist: no header list names it, and creating it
/// changes the compile. Direct mode probes the name wherever an include could find it.
#[test]
fn a_file_appearing_where_has_include_looks_misses() {
    for (mode, ..) in MODES {
        let sb = Sandbox::new();
        sb.write(
            "a.c",
            "#include \"h.h\"\n#if __has_include(\"cfg.h\")\n#include \"cfg.h\"\n#else\n\
             #define V 1\n#endif\nint v = V + W;\n",
        );
        sb.write(
            "inc/h.h",
            "#if __has_include (<cfg2.h>)\n#include <cfg2.h>\n#else\n#define W 10\n#endif\n",
        );
        let args = ["gcc", "-Iinc", "-c", "a.c", "-o", "a.o"];
        let mut compiles = 0;
        for step in ["first", "again", "cfg2.h", "cfg.h", "again"] {
            match step {
                "cfg2.h" => sb.write("inc/cfg2.h", "#define W 20\n"),
                "cfg.h" => sb.write("cfg.h", "#define V 2\n"),
                _ => {}
            }
            if step != "again" {
                compiles += 1;
            }
            reference(&sb, &[], &args);
            let want = sb.read("a.o");
            fs::remove_file(sb.work.join("a.o")).unwrap();
            assert_ok(&distc(&sb, mode, &[], &args), mode);
            assert_eq!(sb.compiles(), compiles, "{mode} {step}");
            assert_eq!(sb.read("a.o"), want, "{mode} {step}: the object");
        }
    }
}
