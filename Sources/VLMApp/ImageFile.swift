import Foundation
import VLMFormats
import VLMImage
import VLMStore

/// An image file read once: its content hash (the key chats, sessions and the store share) and
/// its pixels. The file is mapped (`MappedFile`), so a FIFO, a folder or an empty file is refused
/// at once instead of being waited on.
public struct ImageFile {
    public let hash: String
    public let image: RGBImage
    public let byteCount: Int

    public init(path: String) throws {
        let file = try MappedFile(path: path)
        let bytes = UnsafeRawBufferPointer(start: file.base, count: file.size)
        hash = ContentHash.hex(bytes)
        image = try ImageLoader.decode(bytes, path: path)
        byteCount = file.size
    }
}
