import Crypto
import Foundation

/// The archive's encrypted object format (version 1), AES-256-GCM in chunks:
///
///     "WSHIPENC"  version (1 byte, 1)  key id length (1 byte)  key id (ASCII)
///     wrapped data key: nonce (12) + the 32-byte data key encrypted with the key id's KEK (32) + tag (16)
///     chunk size (4 bytes, big endian: plaintext bytes per chunk)
///     chunks: ciphertext (chunk size bytes; the last one 0...chunk size) + tag (16)
///
/// Each object has its own random data key. A chunk's nonce is its index (8 bytes, big endian), three zero bytes
/// and a final flag (1 on the last chunk, else 0), so a reordered, dropped or appended chunk fails to open, and so
/// does an object cut at a chunk boundary (its new last chunk was not sealed as final). The authenticated data of
/// the wrapped key and of every chunk binds the system id, the object's name (its key in the bucket below the
/// system's prefix) and the key id; the chunks' also binds the whole header. An object renamed or moved to another
/// system, or a header edited, does not open.
public enum SealedObject {
    static let magic = Array("WSHIPENC".utf8)
    static let version: UInt8 = 1
    static let tagSize = 16
    public static let defaultChunkSize = 1 << 20

    /// Where an object belongs: what the authenticated data binds.
    public struct Binding: Sendable, Equatable {
        public var system: UInt64
        public var name: String
        public init(system: UInt64, name: String) {
            self.system = system
            self.name = name
        }

        func context(keyID: String) -> Data {
            var data = Data("walship archive object v1".utf8)
            withUnsafeBytes(of: system.bigEndian) { data.append(contentsOf: $0) }
            let name = Data(self.name.utf8)
            withUnsafeBytes(of: UInt32(name.count).bigEndian) { data.append(contentsOf: $0) }
            data.append(name)
            data.append(UInt8(keyID.utf8.count))
            data.append(contentsOf: keyID.utf8)
            return data
        }
    }

    /// The sealed size of `plaintextSize` bytes: header, plaintext, a tag per chunk (at least one chunk).
    public static func sealedSize(plaintextSize: UInt64, keyID: String, chunkSize: Int = defaultChunkSize) -> UInt64 {
        let chunks = max(1, (plaintextSize + UInt64(chunkSize) - 1) / UInt64(chunkSize))
        return UInt64(headerSize(keyID: keyID)) + plaintextSize + chunks * UInt64(tagSize)
    }

    static func headerSize(keyID: String) -> Int { magic.count + 2 + keyID.utf8.count + 60 + 4 }

    static func nonce(chunk index: UInt64, final: Bool) -> AES.GCM.Nonce {
        var bytes = [UInt8](repeating: 0, count: 12)
        withUnsafeBytes(of: index.bigEndian) { bytes.replaceSubrange(0..<8, with: $0) }
        bytes[11] = final ? 1 : 0
        return try! AES.GCM.Nonce(data: bytes)
    }

    /// Seals a whole object in memory.
    public static func seal(
        _ plaintext: Data, binding: Binding, keyring: Keyring, chunkSize: Int = defaultChunkSize
    ) throws -> Data {
        var sealer = try Sealer(binding: binding, keyring: keyring, chunkSize: chunkSize)
        var out = sealer.header
        out += try sealer.update(plaintext)
        out += try sealer.finish()
        return out
    }

    /// Seals an object piece by piece (a base backup is never held whole): `header` first, then what `update`
    /// and `finish` return, in order. The last chunk is held back until `finish`, which seals it as final.
    public struct Sealer {
        public let header: Data
        public let keyID: String
        let chunkSize: Int
        let dataKey: SymmetricKey
        let chunkAAD: Data
        var pending = Data()
        var index: UInt64 = 0

        public init(binding: Binding, keyring: Keyring, chunkSize: Int = defaultChunkSize) throws {
            precondition(chunkSize >= 4096 && chunkSize <= 1 << 24, "chunk size out of range")
            let kek = keyring.current
            keyID = kek.id
            self.chunkSize = chunkSize
            dataKey = SymmetricKey(size: .bits256)
            let context = binding.context(keyID: kek.id)
            let wrapped = try AES.GCM.seal(dataKey.withUnsafeBytes { Data($0) }, using: kek.material, authenticating: context)
            var header = Data(magic)
            header.append(version)
            header.append(UInt8(kek.id.utf8.count))
            header.append(contentsOf: kek.id.utf8)
            header.append(contentsOf: wrapped.nonce)
            header.append(wrapped.ciphertext)
            header.append(wrapped.tag)
            withUnsafeBytes(of: UInt32(chunkSize).bigEndian) { header.append(contentsOf: $0) }
            self.header = header
            chunkAAD = context + header
        }

        /// Seals every full chunk but the last one buffered.
        public mutating func update(_ plaintext: Data) throws -> Data {
            pending.append(plaintext)
            var out = Data()
            while pending.count > chunkSize {
                out += try sealChunk(pending.prefix(chunkSize), final: false)
                pending = Data(pending.dropFirst(chunkSize))
            }
            return out
        }

        /// Seals what is left as the final chunk (empty for an empty object).
        public mutating func finish() throws -> Data {
            defer { pending = Data() }
            return try sealChunk(pending, final: true)
        }

        private mutating func sealChunk(_ bytes: Data, final: Bool) throws -> Data {
            let box = try AES.GCM.seal(
                bytes, using: dataKey, nonce: SealedObject.nonce(chunk: index, final: final), authenticating: chunkAAD)
            index += 1
            return box.ciphertext + box.tag
        }
    }

    /// The key id an object's header names, without opening it (what `verify` reports as still in use).
    public static func keyID(of sealed: Data) throws(SealError) -> String {
        try parseHeader(sealed, name: "object").keyID
    }

    struct Header {
        var keyID: String
        var wrapped: AES.GCM.SealedBox
        var chunkSize: Int
        var size: Int
    }

    static func parseHeader(_ sealed: Data, name: String) throws(SealError) -> Header {
        let bytes = [UInt8](sealed.prefix(magic.count + 2 + 255 + 64))
        guard bytes.count >= magic.count + 2, Array(bytes[0..<magic.count]) == magic else {
            throw SealError.notEncrypted(name: name)
        }
        guard bytes[magic.count] == version else {
            throw SealError.unsupportedVersion(name: name, version: bytes[magic.count])
        }
        let idLength = Int(bytes[magic.count + 1])
        let idStart = magic.count + 2
        let size = idStart + idLength + 60 + 4
        guard bytes.count >= size else { throw SealError.truncated(name: name) }
        let keyID = String(decoding: bytes[idStart..<idStart + idLength], as: UTF8.self)
        let wrappedStart = idStart + idLength
        let nonce = try? AES.GCM.Nonce(data: bytes[wrappedStart..<wrappedStart + 12])
        guard let nonce,
            let wrapped = try? AES.GCM.SealedBox(
                nonce: nonce, ciphertext: bytes[wrappedStart + 12..<wrappedStart + 44],
                tag: bytes[wrappedStart + 44..<wrappedStart + 60])
        else { throw SealError.truncated(name: name) }
        let chunkSize = bytes[wrappedStart + 60..<wrappedStart + 64].reduce(0) { $0 << 8 | Int($1) }
        guard chunkSize >= 4096 && chunkSize <= 1 << 24 else { throw SealError.tampered(name: name, chunk: nil) }
        return Header(keyID: keyID, wrapped: wrapped, chunkSize: chunkSize, size: size)
    }

    /// Opens a whole object: returns the plaintext only when every chunk authenticated, the last one as final.
    public static func open(_ sealed: Data, binding: Binding, keyring: Keyring) throws(SealError) -> Data {
        var opener = try Opener(start: sealed, objectSize: sealed.count, binding: binding, keyring: keyring)
        var out = Data()
        out.reserveCapacity(max(0, sealed.count - opener.headerSize))
        var offset = sealed.startIndex + opener.headerSize
        repeat {
            let length = opener.nextChunkLength
            out.append(try opener.open(sealed[offset..<offset + length]))
            offset += length
        } while !opener.finished
        return out
    }
}

/// Why an archived object did not open. Each message names the object and, where it matters, the key id.
public enum SealError: Error, Equatable, CustomStringConvertible {
    case notEncrypted(name: String)
    case unsupportedVersion(name: String, version: UInt8)
    case unknownKey(name: String, keyID: String, known: [String])
    case wrongKeyOrPlace(name: String, keyID: String)
    case tampered(name: String, chunk: UInt64?)
    case truncated(name: String)

    public var description: String {
        switch self {
        case .notEncrypted(let name):
            "\(name) is not a walship encrypted object (hint: it was archived without --encryption-keyring)"
        case .unsupportedVersion(let name, let version):
            "\(name) is in encryption format version \(version), which this walship does not read (hint: use a newer walship)"
        case .unknownKey(let name, let keyID, let known):
            "\(name) was encrypted with key \(keyID), which the keyring does not hold (it holds \(known.joined(separator: ", "))) (hint: use the keyring from its escrow copy; keys rotate adds keys and keeps the old ones)"
        case .wrongKeyOrPlace(let name, let keyID):
            "\(name) does not open with key \(keyID): the keyring holds another key under that id, or the object was renamed or moved from another name or system"
        case .tampered(let name, let chunk):
            "\(name) fails authentication\(chunk.map { " at chunk \($0)" } ?? " in its header"): it was altered, cut inside a chunk, or its chunks reordered or swapped"
        case .truncated(let name):
            "\(name) is truncated: it ends without its final chunk"
        }
    }
}

/// An HMAC-SHA256 of an object's plaintext under a key derived from a KEK: what the archive stores in an encrypted
/// object's metadata so that a restarted receiver can tell, without decrypting, that the object holds the spool's
/// file. Keyed, so the store learns nothing of the content from it (a plain hash would confirm a guessed file).
public struct PlaintextMAC {
    private var hmac: HMAC<SHA256>

    public init(key: Keyring.Key) {
        let derived = HKDF<SHA256>.deriveKey(
            inputKeyMaterial: key.material, info: Data("walship archive plaintext mac v1".utf8), outputByteCount: 32)
        hmac = HMAC<SHA256>(key: derived)
    }

    public mutating func update(_ data: Data) { hmac.update(data: data) }

    public func finalize() -> String { hmac.finalize().map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined() }
}
