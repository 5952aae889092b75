//! `flatnet-cni`: the CNI plugin binary (thin: stdin and environment in, stdout out).

use std::io::{Read, Write};

fn main() {
    let mut stdin = Vec::new();
    let have_command = std::env::var_os("CNI_COMMAND").is_some();
    if have_command && std::io::stdin().read_to_end(&mut stdin).is_err() {
        let err = cni::CniError::new(cni::code::IO, "cannot read stdin");
        println!("{}", err.to_json("1.1.0"));
        std::process::exit(1);
    }
    if !have_command {
        eprintln!("{}", flatnet_cni::about());
        return;
    }
    let out = flatnet_cni::run(|k| std::env::var(k).ok(), &stdin);
    if !out.stdout.is_empty() {
        let mut so = std::io::stdout().lock();
        let _ = so.write_all(out.stdout.as_bytes());
        let _ = so.write_all(b"\n");
    }
    std::process::exit(out.exit_code);
}
