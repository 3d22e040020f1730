import Foundation
import VLMTokenizers
import XCTest

final class ChatTemplateTests: XCTestCase {
    func testRenderingMatchesTransformersJinja() throws {
        let json = try Fixtures.json("chat.json") as! [String: Any]
        let smolJinja = json["smollm2_jinja"] as! String
        let cases = json["cases"] as! [[String: Any]]
        XCTAssertGreaterThan(cases.count, 20)
        for c in cases {
            let name = c["template"] as! String
            let jinja = c["jinja"] as? String == "smollm2" ? smolJinja : nil
            let template = try ChatTemplate.load(name: name, directory: Fixtures.prompts, jinja: jinja)
            let messages = (c["messages"] as! [[String: String]]).map {
                ChatMessage(role: ChatMessage.Role(rawValue: $0["role"]!)!, text: $0["content"]!)
            }
            let generation = c["add_generation_prompt"] as! Bool
            XCTAssertEqual(template.render(messages, addGenerationPrompt: generation), c["text"] as! String,
                           "\(name) \(messages.map(\.text)) generation=\(generation)")
        }
    }

    func testSmolLM2DefaultSystemComesFromJinja() throws {
        let json = try Fixtures.json("chat.json") as! [String: Any]
        let template = try ChatTemplate.load(name: "chatml", directory: Fixtures.prompts, jinja: json["smollm2_jinja"] as? String)
        XCTAssertEqual(template.systemDefault, "You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        XCTAssertEqual(template.stopStrings, ["<|im_end|>"])
        let plain = try ChatTemplate.load(name: "chatml", directory: Fixtures.prompts)
        XCTAssertNil(plain.systemDefault)
    }

    func testDefaultSystemOnlyFromConstantLiterals() {
        // Qwen2.5 style: the first system header is followed by an expression, the second by the default.
        let qwen = "{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- endif %}{{- '<|im_end|>\\n' }}{%- else %}{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}{%- endif %}{%- endif %}"
        let template = try? ChatTemplate.load(name: "chatml", directory: Fixtures.prompts, jinja: qwen)
        XCTAssertEqual(template?.systemDefault, "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.")
        let noDefault = try? ChatTemplate.load(name: "chatml", directory: Fixtures.prompts,
                                               jinja: "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' }}")
        XCTAssertNil(noDefault?.systemDefault)
    }

    func testEveryPromptFileLoads() throws {
        for name in ["chatml", "llava-v1", "llama-3", "mistral", "plain"] {
            let template = try ChatTemplate.load(name: name, directory: Fixtures.prompts)
            XCTAssertFalse(template.stopStrings.isEmpty, name)
        }
        XCTAssertThrowsError(try ChatTemplate.load(name: "nope", directory: Fixtures.prompts))
    }

    func testVicunaPromptShape() throws {
        let template = try ChatTemplate.load(name: "llava-v1", directory: Fixtures.prompts)
        let text = template.render([ChatMessage(role: .user, text: "<image>\nWhat is this?")], addGenerationPrompt: true)
        XCTAssertEqual(text, "<s>A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the human's questions. USER: <image>\nWhat is this? ASSISTANT:")
    }

    func testDetect() {
        XCTAssertEqual(ChatTemplate.detect(jinja: "{{ '<|im_start|>' }}", architecture: nil), "chatml")
        XCTAssertEqual(ChatTemplate.detect(jinja: "<|start_header_id|>", architecture: "llama"), "llama-3")
        XCTAssertEqual(ChatTemplate.detect(jinja: "[INST] x [/INST]", architecture: "llama"), "mistral")
        XCTAssertEqual(ChatTemplate.detect(jinja: nil, architecture: "llava"), "llava-v1")
        XCTAssertEqual(ChatTemplate.detect(jinja: nil, architecture: "qwen2"), "chatml")
    }

    func testDefaultDirectoryFindsPrompts() {
        let directory = ChatTemplate.defaultDirectory()
        XCTAssertTrue(FileManager.default.fileExists(atPath: directory + "/chatml.txt"), directory)
    }
}
