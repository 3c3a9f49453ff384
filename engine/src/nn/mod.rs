//! Knob-aware layers: quantized linear/conv, sliced attention, placement.
