//! The gcc/clang family: a command line parsed into a [`CompileJob`] or a reason not to cache
//! ([`args`]), the compiler's identity ([`identity`]), the key ([`key`]) and direct/depend mode
//! ([`direct`]).

pub mod args;
pub mod direct;
pub mod identity;
pub mod key;

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// The source language of a translation unit, as gcc's `-x` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    C,
    Cxx,
    ObjC,
    ObjCxx,
    /// `.S` / `-x assembler-with-cpp`: assembly that goes through the preprocessor.
    AsmCpp,
    /// `.i`: already preprocessed C.
    CPreprocessed,
    /// `.ii`: already preprocessed C++.
    CxxPreprocessed,
    /// `.s`: plain assembly, no preprocessor.
    Asm,
}

impl Language {
    /// Language from a file extension, the way gcc infers it without `-x`.
    pub fn from_path(path: &Path) -> Option<LangGuess> {
        let ext = path.extension()?.to_str()?;
        Some(match ext {
            "c" => LangGuess::Lang(Language::C),
            "cc" | "cp" | "cxx" | "cpp" | "CPP" | "c++" | "C" => LangGuess::Lang(Language::Cxx),
            "m" => LangGuess::Lang(Language::ObjC),
            "mm" | "M" => LangGuess::Lang(Language::ObjCxx),
            "S" | "sx" => LangGuess::Lang(Language::AsmCpp),
            "i" => LangGuess::Lang(Language::CPreprocessed),
            "ii" => LangGuess::Lang(Language::CxxPreprocessed),
            "s" => LangGuess::Lang(Language::Asm),
            "h" | "hh" | "hpp" | "hxx" | "h++" | "H" | "tcc" => LangGuess::Header,
            _ => return None,
        })
    }

    /// Language from the value of `-x`.
    pub fn from_x(value: &str) -> Option<LangGuess> {
        Some(match value {
            "c" => LangGuess::Lang(Language::C),
            "c++" => LangGuess::Lang(Language::Cxx),
            "objective-c" => LangGuess::Lang(Language::ObjC),
            "objective-c++" => LangGuess::Lang(Language::ObjCxx),
            "assembler-with-cpp" => LangGuess::Lang(Language::AsmCpp),
            "cpp-output" => LangGuess::Lang(Language::CPreprocessed),
            "c++-cpp-output" => LangGuess::Lang(Language::CxxPreprocessed),
            "assembler" => LangGuess::Lang(Language::Asm),
            "c-header" | "c++-header" | "objective-c-header" | "objective-c++-header" => {
                LangGuess::Header
            }
            _ => return None,
        })
    }

    /// The stable name that goes into the key.
    pub fn name(self) -> &'static str {
        match self {
            Language::C => "c",
            Language::Cxx => "c++",
            Language::ObjC => "objective-c",
            Language::ObjCxx => "objective-c++",
            Language::AsmCpp => "assembler-with-cpp",
            Language::CPreprocessed => "cpp-output",
            Language::CxxPreprocessed => "c++-cpp-output",
            Language::Asm => "assembler",
        }
    }

    /// Whether the source goes through the preprocessor (otherwise its bytes are the input).
    pub fn is_preprocessed_by_compiler(self) -> bool {
        !matches!(
            self,
            Language::CPreprocessed | Language::CxxPreprocessed | Language::Asm
        )
    }
}

/// What an extension or `-x` value says about an input file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LangGuess {
    Lang(Language),
    /// A header given as an input: gcc builds a precompiled header from it.
    Header,
}

/// How the dependency file (`-MD`/`-MMD`) is produced; it is an output of the compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepFile {
    /// Where the compiler writes it (`-MF`, or derived from `-o` / the source name).
    pub path: PathBuf,
    /// `-MT`/`-MQ` given: otherwise the target is the object path, which then belongs in the key.
    pub explicit_target: bool,
}

/// A cacheable compile of one source file to one object.
#[derive(Debug, Clone)]
pub struct CompileJob {
    /// The source file as given on the command line.
    pub source: PathBuf,
    pub language: Language,
    /// The object file (`-o`, or the source's stem + `.o` in the working directory).
    pub output: PathBuf,
    /// Dependency file output, when `-MD`/`-MMD` asked for one.
    pub dep_file: Option<DepFile>,
    /// Arguments for the preprocessor run: everything except `-c`, `-o X`, the dependency-file
    /// options and the source itself (so `-E` writes no `.d` as a side effect).
    pub cpp_args: Vec<OsString>,
    /// Arguments that go into the key: everything except output paths and the source path.
    /// Dependency options stay (they shape the `.d` output), minus the `-MF` path.
    pub key_args: Vec<OsString>,
    /// The full argument list for the real compile (response files expanded).
    pub args: Vec<OsString>,
    /// Debug info requested (`-g*` other than `-g0`): the object records the working directory.
    pub debug_info: bool,
    /// `-fdebug-prefix-map=OLD=NEW` / `-ffile-prefix-map=OLD=NEW` as (OLD, NEW), in order.
    pub prefix_maps: Vec<(OsString, OsString)>,
    /// User include search directories (`-I`, `-iquote`, `-isystem`, `-idirafter`) in order;
    /// direct mode checks them for newly created headers that would shadow known ones.
    pub search_dirs: Vec<PathBuf>,
    /// Something makes direct mode unsafe for this job (e.g. `-imacros`); the reason.
    pub direct_blocker: Option<&'static str>,
}

impl CompileJob {
    /// The working directory as the object's debug info records it, which then belongs in the
    /// key: `None` without debug info; otherwise `cwd` rewritten by the prefix map gcc applies
    /// (the last one given whose OLD is a string prefix of it), e.g. `/src/a` with
    /// `-fdebug-prefix-map=/src=.` is recorded as `./a`.
    pub fn recorded_cwd(&self, cwd: &Path) -> Option<OsString> {
        if !self.debug_info {
            return None;
        }
        let cwd = cwd.as_os_str().as_bytes();
        let mapped = self
            .prefix_maps
            .iter()
            .rev()
            .find_map(|(old, new)| {
                cwd.strip_prefix(old.as_bytes()).map(|rest| {
                    let mut out = new.as_bytes().to_vec();
                    out.extend_from_slice(rest);
                    OsString::from_vec(out)
                })
            })
            .unwrap_or_else(|| OsStr::from_bytes(cwd).to_os_string());
        Some(mapped)
    }
}

/// The outcome of parsing a command line.
#[derive(Debug)]
pub enum Parsed {
    Compile(Box<CompileJob>),
    /// Not cacheable; the label is what `distc stats` shows.
    Uncacheable(&'static str),
}
