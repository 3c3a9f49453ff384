//! The GGML tensor type table: every type id GGUF files use, with its name, elements per block and
//! bytes per block (from ggml's `type_traits` and gguf-py's `GGML_QUANT_SIZES`), including ids that
//! ggml has since removed, so their sizes can still be counted.

/// A GGML tensor type known to Headroom.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GgmlType {
    /// The id stored in GGUF tensor infos.
    pub id: u32,
    /// ggml's name, upper case (`Q4_K`, `BF16`).
    pub name: &'static str,
    /// Elements per block (1 for plain numbers).
    pub block_elements: u64,
    /// Bytes per block.
    pub block_bytes: u64,
    /// True for ids ggml no longer produces (kept so old files still add up).
    pub removed: bool,
}

const QK_K: u64 = 256;

const fn t(id: u32, name: &'static str, block_elements: u64, block_bytes: u64) -> GgmlType {
    GgmlType { id, name, block_elements, block_bytes, removed: false }
}

const fn gone(id: u32, name: &'static str, block_elements: u64, block_bytes: u64) -> GgmlType {
    GgmlType { id, name, block_elements, block_bytes, removed: true }
}

/// Every type id in ggml's history with a known layout.
pub const GGML_TYPES: &[GgmlType] = &[
    t(0, "F32", 1, 4),
    t(1, "F16", 1, 2),
    t(2, "Q4_0", 32, 2 + 16),
    t(3, "Q4_1", 32, 2 + 2 + 16),
    gone(4, "Q4_2", 16, 2 + 8),
    gone(5, "Q4_3", 16, 2 + 2 + 8),
    t(6, "Q5_0", 32, 2 + 4 + 16),
    t(7, "Q5_1", 32, 2 + 2 + 4 + 16),
    t(8, "Q8_0", 32, 2 + 32),
    t(9, "Q8_1", 32, 4 + 4 + 32),
    t(10, "Q2_K", QK_K, 2 + 2 + QK_K / 16 + QK_K / 4),
    t(11, "Q3_K", QK_K, 2 + QK_K / 4 + QK_K / 8 + 12),
    t(12, "Q4_K", QK_K, 2 + 2 + QK_K / 2 + 12),
    t(13, "Q5_K", QK_K, 2 + 2 + QK_K / 2 + QK_K / 8 + 12),
    t(14, "Q6_K", QK_K, 2 + QK_K / 2 + QK_K / 4 + QK_K / 16),
    t(15, "Q8_K", QK_K, 4 + QK_K + QK_K / 8),
    t(16, "IQ2_XXS", QK_K, 2 + QK_K / 4),
    t(17, "IQ2_XS", QK_K, 2 + QK_K / 4 + QK_K / 32),
    t(18, "IQ3_XXS", QK_K, 2 + QK_K / 4 + QK_K / 8),
    t(19, "IQ1_S", QK_K, 2 + QK_K / 8 + QK_K / 16),
    t(20, "IQ4_NL", 32, 2 + 16),
    t(21, "IQ3_S", QK_K, 2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4),
    t(22, "IQ2_S", QK_K, 2 + QK_K / 4 + QK_K / 16),
    t(23, "IQ4_XS", QK_K, 2 + 2 + QK_K / 2 + QK_K / 64),
    t(24, "I8", 1, 1),
    t(25, "I16", 1, 2),
    t(26, "I32", 1, 4),
    t(27, "I64", 1, 8),
    t(28, "F64", 1, 8),
    t(29, "IQ1_M", QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32),
    t(30, "BF16", 1, 2),
    gone(31, "Q4_0_4_4", 32, 2 + 16),
    gone(32, "Q4_0_4_8", 32, 2 + 16),
    gone(33, "Q4_0_8_8", 32, 2 + 16),
    t(34, "TQ1_0", QK_K, 2 + 4 * 13),
    t(35, "TQ2_0", QK_K, 2 + 64),
    gone(36, "IQ4_NL_4_4", 32, 2 + 16),
    gone(37, "IQ4_NL_4_8", 32, 2 + 16),
    gone(38, "IQ4_NL_8_8", 32, 2 + 16),
    t(39, "MXFP4", 32, 1 + 16),
    t(40, "NVFP4", 64, 4 + 32),
    t(41, "Q1_0", 128, 2 + 16),
];

impl GgmlType {
    /// The type with this id, if Headroom knows it.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        GGML_TYPES.iter().copied().find(|t| t.id == id)
    }

    /// The type with this name (case-insensitive), if Headroom knows it.
    pub fn from_name(name: &str) -> Option<GgmlType> {
        GGML_TYPES.iter().copied().find(|t| t.name.eq_ignore_ascii_case(name))
    }

    /// Bytes to store `elements` values whose rows are `row_len` long, or `None` when the rows
    /// are not a whole number of blocks (which ggml cannot store) or the count overflows.
    pub fn bytes_for(self, elements: u64, row_len: u64) -> Option<u64> {
        if self.block_elements > 1 && (row_len == 0 || !row_len.is_multiple_of(self.block_elements)) {
            return (elements == 0).then_some(0);
        }
        (elements / self.block_elements.max(1)).checked_mul(self.block_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table has unique ids and names; every precision has its entry, and the entries of
    /// the quantized ones agree with candle's own block layouts (what the loaders store).
    #[test]
    fn table_is_consistent_with_knobs_and_candle() {
        for (i, a) in GGML_TYPES.iter().enumerate() {
            for b in &GGML_TYPES[i + 1..] {
                assert_ne!(a.id, b.id);
                assert_ne!(a.name, b.name);
            }
        }
        use crate::knobs::Precision;
        for p in Precision::CONCRETE {
            let t = p.ggml();
            assert_eq!(p.block(), (t.block_elements, t.block_bytes), "{p}");
            if let Some(c) = crate::nn::weights::ggml_type(p) {
                assert_eq!((c.block_size() as u64, c.type_size() as u64), p.block(), "{p} against candle's {c:?}");
            }
        }
        assert_eq!(Precision::Q4K.block(), (256, 144));
        assert_eq!(Precision::Auto.block(), (1, 4));
    }

    /// Sizes follow the blocks: 512 Q4_K values in rows of 256 take two 144-byte blocks.
    #[test]
    fn bytes_for_blocks() {
        let q4k = GgmlType::from_id(12).unwrap();
        assert_eq!(q4k.bytes_for(512, 256), Some(288));
        assert_eq!(q4k.bytes_for(320, 320), None);
        assert_eq!(GgmlType::from_id(30).unwrap().bytes_for(10, 5), Some(20));
        assert_eq!(GgmlType::from_id(1000), None);
    }
}
