// Sampling draws from the tensor core's SeededRandom; users of the generator get it with it.
@_exported import VLMTensor
