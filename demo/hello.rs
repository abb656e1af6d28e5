//! The smallest Rust program distc builds: `distc build demo/hello.rs`.

fn main() {
    println!("Hello from Rust, built through distc!");
}
