//! Argument parsing for gcc and clang.
//!
//! The parser is deliberately strict: an option it does not know makes the compile
//! uncacheable (`unknown-option`) rather than risking a key that misses an input.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use super::{CompileJob, DepFile, LangGuess, Language, Parsed};

/// Options that take their value as the next argument (when not glued to the flag).
/// Each entry: (flag, how the value is used).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Val {
    /// Goes to the preprocessor and the key (e.g. `-D`, `-I`).
    Cpp,
    /// An include search directory: like `Cpp`, and remembered for direct mode.
    SearchDir,
    /// Compiler/assembler option: key, and the preprocessor run too (harmless there).
    Common,
    /// Linker-only value: ignored by `-c`, kept in the key for simplicity.
    Link,
}

const SEPARATE: &[(&str, Val)] = &[
    ("-D", Val::Cpp),
    ("-U", Val::Cpp),
    ("-I", Val::SearchDir),
    ("-isystem", Val::SearchDir),
    ("-iquote", Val::SearchDir),
    ("-idirafter", Val::SearchDir),
    ("-include", Val::Cpp),
    ("-imacros", Val::Cpp),
    ("-iprefix", Val::Cpp),
    ("-iwithprefix", Val::Cpp),
    ("-iwithprefixbefore", Val::Cpp),
    ("-isysroot", Val::Cpp),
    ("-imultilib", Val::Cpp),
    ("--sysroot", Val::Cpp),
    ("-A", Val::Cpp),
    ("-target", Val::Common),
    ("--target", Val::Common),
    ("-arch", Val::Common),
    ("--param", Val::Common),
    ("-Xclang", Val::Common),
    ("-Xassembler", Val::Common),
    ("-Xlinker", Val::Link),
    ("-L", Val::Link),
    ("-l", Val::Link),
    ("-u", Val::Link),
    ("-T", Val::Link),
    ("-z", Val::Link),
];

/// Parse a gcc/clang command line (without the program name). `read_file` reads `@file`
/// response files; it is a parameter so tests need no filesystem.
pub fn parse(args: &[OsString], read_file: &dyn Fn(&Path) -> Option<Vec<u8>>) -> Parsed {
    let args = match expand_response_files(args, read_file, 0) {
        Some(a) => a,
        None => return Parsed::Uncacheable("response-file"),
    };
    parse_expanded(args)
}

/// Expand `@file` arguments the way gcc does (whitespace-separated, quotes and backslashes).
/// `None` when a file cannot be read or nests too deep.
fn expand_response_files(
    args: &[OsString],
    read_file: &dyn Fn(&Path) -> Option<Vec<u8>>,
    depth: u32,
) -> Option<Vec<OsString>> {
    if !args.iter().any(|a| a.as_bytes().first() == Some(&b'@')) {
        return Some(args.to_vec());
    }
    if depth > 8 {
        return None;
    }
    let mut out = Vec::with_capacity(args.len());
    for a in args {
        match a.as_bytes() {
            [b'@', rest @ ..] if !rest.is_empty() => {
                let text = read_file(Path::new(OsStr::from_bytes(rest)))?;
                let inner = split_response(&text);
                out.extend(expand_response_files(&inner, read_file, depth + 1)?);
            }
            _ => out.push(a.clone()),
        }
    }
    Some(out)
}

/// gcc's response-file syntax (libiberty `buildargv`): whitespace separates, single and double
/// quotes group, backslash escapes the next character.
fn split_response(text: &[u8]) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut in_arg = false;
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < text.len() {
        let c = text[i];
        match (quote, c) {
            (_, b'\\') if i + 1 < text.len() => {
                cur.push(text[i + 1]);
                in_arg = true;
                i += 1;
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, b'\'' | b'"') => {
                quote = Some(c);
                in_arg = true;
            }
            (None, c) if c.is_ascii_whitespace() => {
                if in_arg {
                    out.push(OsString::from_vec(std::mem::take(&mut cur)));
                    in_arg = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_arg = true;
            }
        }
        i += 1;
    }
    if in_arg {
        out.push(OsString::from_vec(cur));
    }
    out
}

fn parse_expanded(args: Vec<OsString>) -> Parsed {
    let mut compile = false; // -c
    let mut output: Option<PathBuf> = None;
    let mut sources: Vec<(PathBuf, Option<LangGuess>, bool)> = Vec::new();
    let mut x_lang: Option<LangGuess> = None;
    let mut cpp_args: Vec<OsString> = Vec::with_capacity(args.len());
    let mut key_args: Vec<OsString> = Vec::with_capacity(args.len());
    let mut dep_md = false; // -MD / -MMD
    let mut dep_m = false; // -M / -MM
    let mut dep_mf: Option<PathBuf> = None;
    let mut dep_target = false;
    let mut debug_info = false;
    let mut prefix_maps = Vec::new();
    let mut search_dirs = Vec::new();
    let mut direct_blocker = None;
    let mut uncacheable: Option<&'static str> = None;
    // Keeps the first reason found; options later on the line do not overwrite it.
    let refuse = |r: &'static str, slot: &mut Option<&'static str>| {
        if slot.is_none() {
            *slot = Some(r);
        }
    };

    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        let Some(s) = arg.to_str() else {
            // Non-UTF-8 arguments are paths (sources) or values; options are ASCII.
            if arg.as_bytes().first() == Some(&b'-') {
                refuse("unknown-option", &mut uncacheable);
            } else {
                sources.push((PathBuf::from(arg), x_lang, x_lang.is_some()));
            }
            i += 1;
            continue;
        };
        let next = args.get(i + 1);

        // Non-options: inputs.
        if !s.starts_with('-') || s == "-" {
            if s == "-" {
                refuse("stdin-source", &mut uncacheable);
            }
            sources.push((PathBuf::from(arg), x_lang, x_lang.is_some()));
            i += 1;
            continue;
        }

        // Options whose value may be separate.
        if let Some(&(flag, kind)) = SEPARATE.iter().find(|(f, k)| {
            s == *f
                || (s.starts_with(f)
                    // gcc also takes the value glued to the long search-dir flags and
                    // -imacros (`-isystemdir`); they must be seen as such.
                    && (f.len() == 2
                        || f.starts_with("--")
                        || *k == Val::SearchDir
                        || *f == "-imacros")
                    && !(f.starts_with("--") && s.as_bytes().get(f.len()) != Some(&b'=')))
        }) {
            let (value, consumed): (OsString, usize) = if s == flag {
                match next {
                    Some(v) => (v.clone(), 2),
                    None => return Parsed::Uncacheable("unknown-option"),
                }
            } else {
                let v = &s[flag.len()..];
                (OsString::from(v.strip_prefix('=').unwrap_or(v)), 1)
            };
            if kind == Val::SearchDir {
                search_dirs.push(PathBuf::from(&value));
            }
            if flag == "-imacros" {
                direct_blocker = Some("imacros");
            }
            // `-Xclang -load -Xclang lib.so`: a plugin, as `-fplugin=` is.
            if flag == "-Xclang"
                && value.to_str().is_some_and(|v| {
                    matches!(v, "-load" | "-plugin" | "-add-plugin")
                        || v.starts_with("-fpass-plugin")
                })
            {
                refuse("plugin", &mut uncacheable);
            }
            for a in &args[i..i + consumed] {
                cpp_args.push(a.clone());
                key_args.push(a.clone());
            }
            i += consumed;
            continue;
        }

        match s {
            "-c" => {
                compile = true;
                key_args.push(arg.clone());
                i += 1;
                continue;
            }
            "-o" => {
                let Some(v) = next else {
                    return Parsed::Uncacheable("unknown-option");
                };
                output = Some(PathBuf::from(v));
                i += 2;
                continue;
            }
            "-x" => {
                let Some(v) = next else {
                    return Parsed::Uncacheable("unknown-option");
                };
                x_lang = match v.to_str() {
                    Some("none") => None,
                    Some(v) => match Language::from_x(v) {
                        Some(l) => Some(l),
                        None => {
                            refuse("unsupported-language", &mut uncacheable);
                            None
                        }
                    },
                    None => return Parsed::Uncacheable("unknown-option"),
                };
                // -x is positional: keep it in both lists in place.
                cpp_args.extend([arg.clone(), v.clone()]);
                key_args.extend([arg.clone(), v.clone()]);
                i += 2;
                continue;
            }
            "-MD" | "-MMD" => {
                dep_md = true;
                key_args.push(arg.clone());
                i += 1;
                continue;
            }
            "-M" | "-MM" => {
                dep_m = true;
                key_args.push(arg.clone());
                i += 1;
                continue;
            }
            "-MP" | "-MG" => {
                key_args.push(arg.clone());
                i += 1;
                continue;
            }
            "-MF" | "-MT" | "-MQ" => {
                let Some(v) = next else {
                    return Parsed::Uncacheable("unknown-option");
                };
                if s == "-MF" {
                    dep_mf = Some(PathBuf::from(v));
                } else {
                    dep_target = true;
                    key_args.extend([arg.clone(), v.clone()]);
                }
                i += 2;
                continue;
            }
            "-E" => refuse("preprocess-only", &mut uncacheable),
            "-S" => refuse("assembly-output", &mut uncacheable),
            "-fsyntax-only" => refuse("syntax-only", &mut uncacheable),
            "-save-temps" => refuse("save-temps", &mut uncacheable),
            "-v" | "-###" | "--version" | "--help" | "-dumpversion" | "-dumpmachine"
            | "-dumpspecs" | "--verbose" => refuse("informational", &mut uncacheable),
            "-ftest-coverage" | "-fprofile-arcs" | "--coverage" => {
                refuse("coverage", &mut uncacheable)
            }
            "-gsplit-dwarf" => refuse("split-dwarf", &mut uncacheable),
            _ => {}
        }

        if let Some(rest) = s.strip_prefix("-MF") {
            // -MFfile
            dep_mf = Some(PathBuf::from(rest));
            i += 1;
            continue;
        }
        if let Some(rest) = s.strip_prefix("-MT").or_else(|| s.strip_prefix("-MQ"))
            && !rest.is_empty()
        {
            dep_target = true;
            key_args.push(arg.clone());
            i += 1;
            continue;
        }
        if let Some(rest) = s.strip_prefix("-o") {
            output = Some(PathBuf::from(rest));
            i += 1;
            continue;
        }
        if let Some(rest) = s.strip_prefix("-x") {
            x_lang = match rest {
                "none" => None,
                v => match Language::from_x(v) {
                    Some(l) => Some(l),
                    None => {
                        refuse("unsupported-language", &mut uncacheable);
                        None
                    }
                },
            };
            cpp_args.push(arg.clone());
            key_args.push(arg.clone());
            i += 1;
            continue;
        }

        // Everything else is a single-argument option; classify it.
        if let Some(reason) = classify_single(s) {
            refuse(reason, &mut uncacheable);
        }
        if s.starts_with("-g") && s != "-g0" {
            debug_info = true;
        }
        if s == "-g0" {
            debug_info = false;
        }
        for p in ["-fdebug-prefix-map=", "-ffile-prefix-map="] {
            if let Some(v) = s.strip_prefix(p)
                && let Some((old, new)) = v.split_once('=')
            {
                prefix_maps.push((OsString::from(old), OsString::from(new)));
            }
        }
        if s.contains("__TIME__") || s.contains("__DATE__") || s.contains("__TIMESTAMP__") {
            direct_blocker = Some("time-macro");
        }
        cpp_args.push(arg.clone());
        key_args.push(arg.clone());
        i += 1;
    }

    // Order matters: the most fundamental reason wins.
    if let Some(r) = uncacheable {
        return Parsed::Uncacheable(r);
    }
    if dep_m && !dep_md && !compile {
        return Parsed::Uncacheable("dependencies-only");
    }
    if !compile {
        return Parsed::Uncacheable("linking");
    }
    if dep_m {
        // -M/-MM together with -c: gcc writes the dependency list instead of the object.
        return Parsed::Uncacheable("dependencies-only");
    }
    if sources.len() > 1 {
        return Parsed::Uncacheable("multiple-sources");
    }
    let Some((source, lang, _)) = sources.pop() else {
        return Parsed::Uncacheable("no-source");
    };
    let language = match lang.or_else(|| Language::from_path(&source)) {
        Some(LangGuess::Lang(l)) => l,
        Some(LangGuess::Header) => return Parsed::Uncacheable("precompiled-header"),
        None => return Parsed::Uncacheable("unknown-source-type"),
    };
    let output = match output {
        Some(o) if o.as_os_str() == "-" => return Parsed::Uncacheable("output-to-stdout"),
        Some(o) => o,
        None => {
            let stem = source.file_stem().unwrap_or(source.as_os_str());
            let mut o = OsString::from(stem);
            o.push(".o");
            PathBuf::from(o)
        }
    };
    let dep_file = if dep_md {
        let path = match dep_mf {
            Some(p) => p,
            None => {
                // gcc: -o's name with its suffix replaced by .d, else the source's stem + .d.
                output.with_extension("d")
            }
        };
        Some(DepFile {
            path,
            explicit_target: dep_target,
        })
    } else {
        None
    };
    if dep_md && !dep_target {
        // The default target of the .d file is the object path, so the path shapes an output.
        key_args.push(OsString::from("-MQ"));
        key_args.push(output.clone().into_os_string());
    }
    Parsed::Compile(Box::new(CompileJob {
        source,
        language,
        output,
        dep_file,
        cpp_args,
        key_args,
        args,
        debug_info,
        prefix_maps,
        search_dirs,
        direct_blocker,
    }))
}

/// Classify a single-argument option: `None` = known and cacheable, `Some(reason)` = not.
fn classify_single(s: &str) -> Option<&'static str> {
    // Options that write extra outputs or read inputs the key cannot see.
    const REFUSED_PREFIXES: &[(&str, &str)] = &[
        ("-fprofile-generate", "profile-generation"),
        ("-fprofile-instr-generate", "profile-generation"),
        ("-fprofile-use", "profile-use"),
        ("-fprofile-instr-use", "profile-use"),
        ("-fprofile-sample-use", "profile-use"),
        ("-fprofile-remapping-file", "profile-use"),
        ("-fauto-profile", "profile-use"),
        // Reads the `.gcda` profile data, as -fprofile-use does.
        ("-fbranch-probabilities", "profile-use"),
        ("-fprofile-", "profile-generation"),
        ("-fcoverage", "coverage"),
        ("-fdump-", "dump-files"),
        ("-fstack-usage", "dump-files"),
        ("-fcallgraph-info", "dump-files"),
        ("-fopt-info", "dump-files"),
        ("-fplugin", "plugin"),
        ("-fpass-plugin", "plugin"),
        // clang configuration files: more options, from a file.
        ("--config", "config-file"),
        ("-save-temps", "save-temps"),
        ("-specs", "specs-file"),
        ("--specs", "specs-file"),
        ("-Wp,", "unknown-option"),
        ("-Xpreprocessor", "unknown-option"),
        ("-B", "compiler-path"),
        ("-print-", "informational"),
        ("-fmodules", "modules"),
        ("-fmodule", "modules"),
        ("-emit-", "unknown-option"),
        ("-aux-info", "dump-files"),
        ("-d", "unknown-option"),
    ];
    // The assembler writing a listing (`-Wa,-adhln=file.lst`) or dependencies of its own:
    // files a bundle does not carry.
    if let Some(rest) = s.strip_prefix("-Wa,")
        && rest
            .split(',')
            .any(|p| (p.starts_with("-a") && p.contains('=')) || p.starts_with("--MD"))
    {
        return Some("assembler-output-file");
    }
    if let Some(native) = ["-march=", "-mcpu=", "-mtune="]
        .iter()
        .find_map(|p| s.strip_prefix(p))
        && native == "native"
    {
        return Some("march-native");
    }
    for (p, r) in REFUSED_PREFIXES {
        if s.starts_with(p) {
            return Some(r);
        }
    }
    const KNOWN_EXACT: &[&str] = &[
        "-w",
        "-pipe",
        "-ansi",
        "-pedantic",
        "-pedantic-errors",
        "-pthread",
        "-pthreads",
        "-nostdinc",
        "-nostdinc++",
        "-nostdlib",
        "-nostdlib++",
        "-nodefaultlibs",
        "-nostartfiles",
        "-static",
        "-shared",
        "-static-libgcc",
        "-static-libstdc++",
        "-rdynamic",
        "-pie",
        "-no-pie",
        "-P",
        "-C",
        "-CC",
        "-H",
        "-trigraphs",
        "-undef",
        "-traditional-cpp",
        "-no-integrated-cpp",
        "-s",
        "-p",
        "-pg",
        "-integrated-as",
        "-no-integrated-as",
        "-Qunused-arguments",
        "-Qn",
        "-Qy",
    ];
    if KNOWN_EXACT.contains(&s) {
        return None;
    }
    const KNOWN_PREFIXES: &[&str] = &[
        "-W",
        "-f",
        "-m",
        "-O",
        "-g",
        "-std=",
        "--std=",
        "-std",
        "-D",
        "-U",
        "-I",
        "-L",
        "-l",
        "-isystem",
        "-iquote",
        "-idirafter",
        "-include",
        "-isysroot",
        "--sysroot=",
        "-flto",
        "-Xclang",
        "--target=",
        "-target",
        "--param=",
        "-e",
        "-ggdb",
    ];
    if KNOWN_PREFIXES.iter().any(|p| s.starts_with(p)) {
        return None;
    }
    Some("unknown-option")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(line: &str) -> Parsed {
        let args: Vec<OsString> = line.split_whitespace().map(OsString::from).collect();
        parse(&args, &|path| {
            (path == Path::new("rsp"))
                .then(|| b"-c 'a b.c' -o\n\"out dir/x.o\" -DX=\\\"y\\\"".to_vec())
        })
    }
    fn job(line: &str) -> CompileJob {
        match p(line) {
            Parsed::Compile(j) => *j,
            Parsed::Uncacheable(r) => panic!("{line}: uncacheable {r}"),
        }
    }
    fn reason(line: &str) -> &'static str {
        match p(line) {
            Parsed::Compile(_) => panic!("{line}: unexpectedly cacheable"),
            Parsed::Uncacheable(r) => r,
        }
    }
    fn strs(v: &[OsString]) -> Vec<&str> {
        v.iter().map(|a| a.to_str().unwrap()).collect()
    }

    #[test]
    fn simple_compile() {
        let j = job("-c hello.c -o out/hello.o -O2 -Wall -Iinc -DFOO=1");
        assert_eq!(j.source, Path::new("hello.c"));
        assert_eq!(j.output, Path::new("out/hello.o"));
        assert_eq!(j.language, Language::C);
        assert!(j.dep_file.is_none());
        assert_eq!(strs(&j.cpp_args), ["-O2", "-Wall", "-Iinc", "-DFOO=1"]);
        assert_eq!(
            strs(&j.key_args),
            ["-c", "-O2", "-Wall", "-Iinc", "-DFOO=1"]
        );
        assert_eq!(j.search_dirs, [PathBuf::from("inc")]);
        assert!(!j.debug_info);
    }

    #[test]
    fn default_output_and_language() {
        let j = job("-c src/x.cpp");
        assert_eq!(j.output, Path::new("x.o"));
        assert_eq!(j.language, Language::Cxx);
        let j = job("-x c++ -c weird.txt -o w.o");
        assert_eq!(j.language, Language::Cxx);
        assert_eq!(strs(&j.cpp_args), ["-x", "c++"]);
    }

    #[test]
    fn separate_values() {
        let j = job("-c a.c -I inc -isystem sys -include pre.h -D X -o a.o");
        assert_eq!(
            strs(&j.cpp_args),
            [
                "-I", "inc", "-isystem", "sys", "-include", "pre.h", "-D", "X"
            ]
        );
        assert_eq!(j.search_dirs, [PathBuf::from("inc"), PathBuf::from("sys")]);
        let j = job("-c a.c -isystemsys -iquoteq -idirafterlate -Iinc -o a.o");
        assert_eq!(
            j.search_dirs,
            ["sys", "q", "late", "inc"].map(PathBuf::from)
        );
        assert_eq!(job("-c a.c -imacrosm.h").direct_blocker, Some("imacros"));
    }

    #[test]
    fn dep_files() {
        let j = job("-c a.c -o obj/a.o -MD");
        let d = j.dep_file.clone().unwrap();
        assert_eq!(d.path, Path::new("obj/a.d"));
        assert!(!d.explicit_target);
        // Default target = object path: in the key.
        assert_eq!(strs(&j.key_args), ["-c", "-MD", "-MQ", "obj/a.o"]);
        assert!(j.cpp_args.is_empty());

        let j = job("-c a.c -o a.o -MMD -MF deps/a.d -MT tgt -MP");
        let d = j.dep_file.clone().unwrap();
        assert_eq!(d.path, Path::new("deps/a.d"));
        assert!(d.explicit_target);
        assert_eq!(strs(&j.key_args), ["-c", "-MMD", "-MT", "tgt", "-MP"]);

        let j = job("-c a.c -MD -MFx.d");
        assert_eq!(j.dep_file.unwrap().path, Path::new("x.d"));
    }

    #[test]
    fn uncacheable_reasons() {
        assert_eq!(reason("a.c -o a"), "linking");
        assert_eq!(reason("a.o b.o -o prog"), "linking");
        assert_eq!(reason("-E a.c"), "preprocess-only");
        assert_eq!(reason("-M a.c"), "dependencies-only");
        assert_eq!(reason("-MM a.c"), "dependencies-only");
        assert_eq!(reason("-c a.c b.c"), "multiple-sources");
        assert_eq!(reason("-c"), "no-source");
        assert_eq!(reason("-c a.c -save-temps"), "save-temps");
        assert_eq!(reason("-c a.h"), "precompiled-header");
        assert_eq!(reason("-x c-header -c a.x"), "precompiled-header");
        assert_eq!(reason("-c a.c -o -"), "output-to-stdout");
        assert_eq!(reason("-c a.c --frobnicate"), "unknown-option");
        assert_eq!(reason("-c a.c -march=native"), "march-native");
        assert_eq!(reason("-c a.c -fprofile-generate"), "profile-generation");
        // Inputs no dependency output lists, refused by option.
        assert_eq!(reason("-c a.c -fprofile-use"), "profile-use");
        assert_eq!(reason("-c a.c -fprofile-use=dir"), "profile-use");
        assert_eq!(
            reason("-c a.c -fprofile-instr-use=a.profdata"),
            "profile-use"
        );
        assert_eq!(reason("-c a.c -fprofile-sample-use=a.prof"), "profile-use");
        assert_eq!(reason("-c a.c -fauto-profile=a.afdo"), "profile-use");
        assert_eq!(reason("-c a.c -fplugin=p.so"), "plugin");
        assert_eq!(reason("-c a.c -fplugin-arg-p-x=1"), "plugin");
        assert_eq!(reason("-c a.c -fpass-plugin=p.so"), "plugin");
        assert_eq!(reason("-c a.c -Xclang -load -Xclang p.so"), "plugin");
        assert_eq!(reason("-c a.c -fbranch-probabilities"), "profile-use");
        assert_eq!(reason("-c a.c -specs=x.specs"), "specs-file");
        assert_eq!(reason("-c a.c --specs=x.specs"), "specs-file");
        assert_eq!(reason("-c a.c -B/opt/tools"), "compiler-path");
        assert_eq!(reason("-c a.c --config=x.cfg"), "config-file");
        assert_eq!(reason("-c a.c --config x.cfg"), "config-file");
        job("-c a.c -fsanitize=address -fsanitize-ignorelist=ign.txt");
        assert_eq!(reason("-c a.c --coverage"), "coverage");
        assert_eq!(reason("-c a.c -ftest-coverage"), "coverage");
        assert_eq!(reason("-c a.c -S"), "assembly-output");
        assert_eq!(reason("-c - -x c"), "stdin-source");
        assert_eq!(reason("-c a.c @missing"), "response-file");
        assert_eq!(reason("-c a.c -gsplit-dwarf"), "split-dwarf");
        assert_eq!(reason("-c a.c -Wp,-MD,x.d"), "unknown-option");
        assert_eq!(reason("-c a.c -Wa,-adhln=a.lst"), "assembler-output-file");
        assert_eq!(
            reason("-c a.c -Wa,--noexecstack,--MD,a.d"),
            "assembler-output-file"
        );
        job("-c a.c -Wa,--noexecstack");
    }

    #[test]
    fn debug_and_prefix_maps() {
        let j = job("-c a.c -g -fdebug-prefix-map=/src=.");
        assert!(j.debug_info);
        assert_eq!(j.prefix_maps, [("/src".into(), ".".into())]);
        // The mapped directory is what the object records: two directories under /src differ.
        assert_eq!(j.recorded_cwd(Path::new("/src")).unwrap(), ".");
        assert_eq!(j.recorded_cwd(Path::new("/src/sub")).unwrap(), "./sub");
        assert_eq!(j.recorded_cwd(Path::new("/other")).unwrap(), "/other");
        // gcc uses the last matching map.
        let j = job("-c a.c -g -ffile-prefix-map=/src=A -fdebug-prefix-map=/src/sub=B");
        assert_eq!(j.recorded_cwd(Path::new("/src/sub/x")).unwrap(), "B/x");
        assert_eq!(j.recorded_cwd(Path::new("/src/x")).unwrap(), "A/x");
        let j = job("-c a.c -g -g0");
        assert!(!j.debug_info);
        assert!(j.recorded_cwd(Path::new("/src")).is_none());
    }

    #[test]
    fn response_file_expanded() {
        let j = job("@rsp -O1");
        assert_eq!(j.source, Path::new("a b.c"));
        assert_eq!(j.output, Path::new("out dir/x.o"));
        assert_eq!(strs(&j.cpp_args), ["-DX=\"y\"", "-O1"]);
    }

    #[test]
    fn flags_in_key() {
        let a = job("-c a.c -O1");
        let b = job("-c a.c -O2");
        assert_ne!(a.key_args, b.key_args);
        let a = job("-c a.c -o x.o");
        let b = job("-c a.c -o y.o");
        assert_eq!(a.key_args, b.key_args, "object path is not an input");
    }

    #[test]
    fn imacros_blocks_direct_mode() {
        assert_eq!(job("-c a.c -imacros m.h").direct_blocker, Some("imacros"));
        assert_eq!(job("-c a.c").direct_blocker, None);
    }
}
