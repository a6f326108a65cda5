import Crypto
import Foundation

extension SealedObject {
    /// Opens an object piece by piece, for one larger than memory (a base backup): the same checks as `open`, one
    /// chunk at a time. Give it the object's first bytes (at least `headerProbeBytes`, or the whole object when
    /// shorter) and its size, then each chunk of `nextChunkLength` bytes in order until `finished`. Plaintext it
    /// returns is authenticated chunk by chunk; the object is whole only once `finished` (its final chunk opened).
    public struct Opener {
        /// Enough of an object's start to hold any header.
        public static let headerProbeBytes = magic.count + 2 + 255 + 64

        /// The header's length: the first chunk starts here.
        public let headerSize: Int
        private let objectSize: Int
        private let name: String
        private let dataKey: SymmetricKey
        private let aad: Data
        private let stride: Int
        private var offset: Int
        private var index: UInt64 = 0
        public private(set) var finished = false

        public init(start: Data, objectSize: Int, binding: Binding, keyring: Keyring) throws(SealError) {
            name = binding.name
            let header = try parseHeader(start, name: name)
            guard let kek = keyring.key(id: header.keyID) else {
                throw SealError.unknownKey(name: name, keyID: header.keyID, known: keyring.keys.map(\.id))
            }
            let context = binding.context(keyID: header.keyID)
            guard let keyBytes = try? AES.GCM.open(header.wrapped, using: kek.material, authenticating: context) else {
                throw SealError.wrongKeyOrPlace(name: name, keyID: header.keyID)
            }
            dataKey = SymmetricKey(data: keyBytes)
            aad = context + start.prefix(header.size)
            headerSize = header.size
            self.objectSize = objectSize
            stride = header.chunkSize + tagSize
            offset = header.size
        }

        /// How many bytes the next chunk takes (its ciphertext and tag); 0 once finished.
        public var nextChunkLength: Int { finished ? 0 : min(stride, max(0, objectSize - offset)) }

        /// Opens the next chunk (`nextChunkLength` bytes): its plaintext, or the error `open` would give.
        public mutating func open(_ chunk: Data) throws(SealError) -> Data {
            let remaining = objectSize - offset
            guard !finished, remaining >= tagSize, chunk.count == nextChunkLength else {
                throw SealError.truncated(name: name)
            }
            let final = remaining <= stride
            guard
                let box = try? AES.GCM.SealedBox(
                    nonce: nonce(chunk: index, final: final), ciphertext: chunk.dropLast(tagSize), tag: chunk.suffix(tagSize)),
                let plain = try? AES.GCM.open(box, using: dataKey, authenticating: aad)
            else {
                // A chunk that opens as a middle chunk where the object ends was cut at a chunk boundary.
                if final, remaining == stride,
                    let box = try? AES.GCM.SealedBox(
                        nonce: nonce(chunk: index, final: false), ciphertext: chunk.dropLast(tagSize),
                        tag: chunk.suffix(tagSize)),
                    (try? AES.GCM.open(box, using: dataKey, authenticating: aad)) != nil
                {
                    throw SealError.truncated(name: name)
                }
                throw SealError.tampered(name: name, chunk: index)
            }
            offset += chunk.count
            index += 1
            finished = final
            return plain
        }
    }
}
