//! Four-level x86_64 page tables and the TLB gather (Linux: `arch/x86/mm`, `mm/mmu_gather.c`).
