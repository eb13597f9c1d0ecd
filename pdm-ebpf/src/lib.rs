#![no_std]
// A library target so pdm-user can name this crate as a build dependency (cargo then
// rebuilds pdm-user when the eBPF sources change); the programs are in main.rs.
