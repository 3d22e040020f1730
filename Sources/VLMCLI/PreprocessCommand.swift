import ArgumentParser
import Foundation
import VLMApp
import VLMFormats
import VLMGeneration
import VLMImage
import VLMModels
import VLMTensor

struct PreprocessCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "preprocess", abstract: "Write an image's model input (pixel_values) as safetensors.")

    @Option(name: .long, help: "A LLaVA folder or a name in the model store.") var model: String
    @Option(name: .long, help: "The image (PNG or JPEG).") var image: String
    @Option(name: .long, help: "Output .safetensors file.") var out: String

    func run() async throws {
        let m = try loadChatModel(path: ModelStore.resolve(model))
        guard let support = m.images else { throw ValidationError("\(model) takes no images") }
        let pixels = try support.preprocess(try ImageLoader.load(path: image))
        let batched = Tensor(shape: [1] + pixels.shape, zeroed: false)
        batched.data.update(from: pixels.data, count: pixels.count)
        try SafetensorsWriter.write([(name: "pixel_values", tensor: batched, dtype: .f32)], to: out)
    }
}
