import Foundation
import VLMImage
import VLMModels
import VLMTensor
import VLMTokenizers

/// A LLaVA model ready to chat: the composition, its tokenizer and chat template, and the
/// image support ChatSession expands placeholders with.
public final class VisionLanguageModel: ChatModel, @unchecked Sendable {
    public let path: String
    public let llava: LlavaModel
    public let tokenizer: Tokenizer
    public let template: ChatTemplate
    public let imageTokenText = "<image>"
    /// The id placeholders get in prompt ids: the vocabulary's `<image>`, or LLaVA's -200 sentinel
    /// when the tokenizer has none (original checkpoints).
    public let imageTokenID: Int

    public var decoder: LlamaModel { llava.decoder }

    /// `config` is the folder's config.json when the caller has read it already.
    public convenience init(path: String, config: ModelConfigFile? = nil, template: String? = nil) throws {
        let llava = try LlavaModel.load(folder: path, config: config)
        // A composed folder without tokenizer files talks with its language model's tokenizer.
        let tokenizer: Tokenizer
        if let text = llava.textModel, !FileManager.default.fileExists(atPath: path + "/tokenizer.json") {
            tokenizer = text.tokenizer
        } else {
            tokenizer = try Tokenizer.load(folder: path)
        }
        try self.init(path: path, llava: llava, tokenizer: tokenizer, template: template)
    }

    /// llama.cpp's LLaVA-1.5 pair: a text GGUF (decoder, tokenizer, chat template) and its mmproj GGUF
    /// (`select`: which tower rows are image tokens, when a pair's mmproj.json says).
    public convenience init(text: String, mmproj: String, select: VisionFeatureSelect? = nil, template: String? = nil) throws {
        let llava = try LlavaModel.load(text: text, mmproj: mmproj, select: select)
        try self.init(path: text, llava: llava, tokenizer: llava.textModel!.tokenizer, template: template)
    }

    private init(path: String, llava: LlavaModel, tokenizer: Tokenizer, template: String?) throws {
        self.path = path
        self.llava = llava
        self.tokenizer = tokenizer
        if llava.imageTokenInVocabulary {
            imageTokenID = tokenizer.tokenID(imageTokenText) ?? llava.imageTokenID
        } else {
            imageTokenID = llava.imageTokenID
        }
        let name = try template ?? ChatTemplate.detect(jinja: tokenizer.chatTemplateSource, architecture: "llava")
        self.template = try ChatTemplate.load(name: name, directory: ChatTemplate.defaultDirectory(), jinja: tokenizer.chatTemplateSource)
    }

    public var images: ImageSupport? {
        let llava = self.llava
        let sized = llava.anyResolution.map { _ in
            ImageSupport.Sized(featureCount: { llava.imageTokenCount(height: $0, width: $1) },
                               encode: { try llava.imageFeatures(pixels: $0, size: ($1, $2)) })
        }
        return ImageSupport(tokenID: imageTokenID, tokenText: imageTokenText, featureCount: llava.featureCount,
                            preprocess: { try llava.modelInput($0) }, encode: { try llava.imageFeatures(pixels: $0) }, sized: sized)
    }

    public var stopTokens: Set<Int> { tokenizer.eosTokenIDs }
}
