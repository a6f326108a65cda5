import Crypto
import Foundation
import Testing

@testable import ArchiveCrypto

@Suite struct SealedObjectTests {
    static let keyring = Keyring.generate()
    static let binding = SealedObject.Binding(system: 7_301_234_567_890, name: "wal/000000010000000000000003.lz4")
    static let chunk = 4096

    static func plaintext(_ count: Int) -> Data { Data((0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 8) }) }

    static func seal(_ plaintext: Data) throws -> Data {
        try SealedObject.seal(plaintext, binding: binding, keyring: keyring, chunkSize: chunk)
    }

    @Test(arguments: [0, 1, 4095, 4096, 4097, 3 * 4096, 3 * 4096 + 5])
    func roundTripsAtEverySizeAroundTheChunkBoundaries(size: Int) throws {
        let plain = Self.plaintext(size)
        let sealed = try Self.seal(plain)
        #expect(
            UInt64(sealed.count)
                == SealedObject.sealedSize(plaintextSize: UInt64(size), keyID: Self.keyring.currentID, chunkSize: Self.chunk))
        #expect(try SealedObject.open(sealed, binding: Self.binding, keyring: Self.keyring) == plain)
        #expect(try SealedObject.keyID(of: sealed) == Self.keyring.currentID)
    }

    @Test func theStoreSeesNoneOfTheContent() throws {
        let secret = Data(String(repeating: "patient 4711: diagnosis confidential; ", count: 500).utf8)
        let sealed = try Self.seal(secret)
        #expect(sealed.range(of: Data("diagnosis".utf8)) == nil)
        #expect(sealed.range(of: Data("patient 4711".utf8)) == nil)
        // Two seals of the same bytes differ (a fresh data key each time).
        #expect(try Self.seal(secret) != sealed)
    }

    /// Cut at every chunk boundary (and inside the header, and one byte short): never opens, always "truncated".
    @Test func truncationAtEveryChunkBoundaryIsDetected() throws {
        let sealed = try Self.seal(Self.plaintext(5 * 4096 + 100))
        let header = SealedObject.headerSize(keyID: Self.keyring.currentID)
        // Cut inside a chunk, the object fails authentication (nothing tells a cut from an altered chunk there).
        #expect(throws: SealError.tampered(name: Self.binding.name, chunk: 5)) {
            try SealedObject.open(sealed.prefix(sealed.count - 1), binding: Self.binding, keyring: Self.keyring)
        }
        var cuts = [header, header - 1, 10]
        for chunk in 1...5 { cuts.append(header + chunk * (4096 + 16)) }
        for cut in cuts {
            #expect(throws: SealError.truncated(name: Self.binding.name), "cut at \(cut)") {
                try SealedObject.open(sealed.prefix(cut), binding: Self.binding, keyring: Self.keyring)
            }
        }
        // An object of whole chunks cut after its next-to-last one.
        let whole = try Self.seal(Self.plaintext(3 * 4096))
        #expect(throws: SealError.truncated(name: Self.binding.name)) {
            try SealedObject.open(whole.prefix(header + 2 * (4096 + 16)), binding: Self.binding, keyring: Self.keyring)
        }
    }

    @Test func swappedOrDuplicatedChunksAreDetected() throws {
        let sealed = try Self.seal(Self.plaintext(4 * 4096 + 10))
        let header = SealedObject.headerSize(keyID: Self.keyring.currentID)
        let stride = 4096 + 16
        func chunk(_ i: Int) -> Data { sealed.subdata(in: header + i * stride..<min(sealed.count, header + (i + 1) * stride)) }
        let swapped = sealed.prefix(header) + chunk(1) + chunk(0) + chunk(2) + chunk(3) + chunk(4)
        #expect(throws: SealError.tampered(name: Self.binding.name, chunk: 0)) {
            try SealedObject.open(swapped, binding: Self.binding, keyring: Self.keyring)
        }
        let duplicated = sealed.prefix(header) + chunk(0) + chunk(0) + chunk(1) + chunk(2) + chunk(3) + chunk(4)
        #expect(throws: SealError.tampered(name: Self.binding.name, chunk: 1)) {
            try SealedObject.open(duplicated, binding: Self.binding, keyring: Self.keyring)
        }
        // A chunk from another object of the same name and key does not fit either (another data key).
        let other = try Self.seal(Self.plaintext(4 * 4096 + 10))
        let mixed = sealed.prefix(header + 2 * stride) + other.subdata(in: header + 2 * stride..<other.count)
        #expect(throws: SealError.tampered(name: Self.binding.name, chunk: 2)) {
            try SealedObject.open(mixed, binding: Self.binding, keyring: Self.keyring)
        }
    }

    @Test func aTamperedByteAnywhereIsDetected() throws {
        let sealed = try Self.seal(Self.plaintext(2 * 4096 + 77))
        let header = SealedObject.headerSize(keyID: Self.keyring.currentID)
        for position in [header, header + 100, header + 4096 + 15, header + 4096 + 16 + 3, sealed.count - 1] {
            var bad = sealed
            bad[position] ^= 0x01
            #expect(throws: SealError.self, "byte \(position)") {
                try SealedObject.open(bad, binding: Self.binding, keyring: Self.keyring)
            }
        }
        // In the header: the wrapped key, the chunk size.
        for position in [12 + Self.keyring.currentID.utf8.count, header - 1] {
            var bad = sealed
            bad[position] ^= 0x01
            #expect(throws: SealError.self, "header byte \(position)") {
                try SealedObject.open(bad, binding: Self.binding, keyring: Self.keyring)
            }
        }
    }

    @Test func anObjectRenamedOrMovedToAnotherSystemDoesNotOpen() throws {
        let sealed = try Self.seal(Self.plaintext(100))
        let renamed = SealedObject.Binding(system: Self.binding.system, name: "wal/000000010000000000000004.lz4")
        #expect(throws: SealError.wrongKeyOrPlace(name: renamed.name, keyID: Self.keyring.currentID)) {
            try SealedObject.open(sealed, binding: renamed, keyring: Self.keyring)
        }
        let moved = SealedObject.Binding(system: 1, name: Self.binding.name)
        #expect(throws: SealError.wrongKeyOrPlace(name: moved.name, keyID: Self.keyring.currentID)) {
            try SealedObject.open(sealed, binding: moved, keyring: Self.keyring)
        }
    }

    @Test func aMissingOrWrongKeyIsNamed() throws {
        let sealed = try Self.seal(Self.plaintext(100))
        let other = Keyring.generate()
        #expect {
            try SealedObject.open(sealed, binding: Self.binding, keyring: other)
        } throws: { error in
            let message = "\(error)"
            return error as? SealError
                == .unknownKey(name: Self.binding.name, keyID: Self.keyring.currentID, known: [other.currentID])
                && message.contains("was encrypted with key \(Self.keyring.currentID), which the keyring does not hold")
        }
        // Another key under the same id (a keyring regenerated by hand): told apart from a missing one.
        let impostor = try Keyring(
            keys: [.init(id: Self.keyring.currentID, createdAt: Date(), material: SymmetricKey(size: .bits256))],
            currentID: Self.keyring.currentID)
        #expect(throws: SealError.wrongKeyOrPlace(name: Self.binding.name, keyID: Self.keyring.currentID)) {
            try SealedObject.open(sealed, binding: Self.binding, keyring: impostor)
        }
        // Also the key id in the header edited to another key the keyring holds.
        var rotated = Self.keyring
        _ = rotated.rotate()
        var edited = sealed
        let idStart = 10
        let newID = Array(rotated.currentID.utf8)
        if newID.count == Self.keyring.currentID.utf8.count {
            edited.replaceSubrange(idStart..<idStart + newID.count, with: newID)
            #expect(throws: SealError.wrongKeyOrPlace(name: Self.binding.name, keyID: rotated.currentID)) {
                try SealedObject.open(edited, binding: Self.binding, keyring: rotated)
            }
        }
    }

    @Test func aRotatedKeyringOpensOldObjectsAndSealsNewOnesWithTheNewKey() throws {
        var keyring = Keyring.generate()
        let old = try SealedObject.seal(Data("old".utf8), binding: Self.binding, keyring: keyring)
        let oldID = keyring.currentID
        let added = keyring.rotate()
        #expect(keyring.currentID == added.id)
        #expect(keyring.keys.count == 2)
        let new = try SealedObject.seal(Data("new".utf8), binding: Self.binding, keyring: keyring)
        #expect(try SealedObject.keyID(of: old) == oldID)
        #expect(try SealedObject.keyID(of: new) == added.id)
        #expect(try SealedObject.open(old, binding: Self.binding, keyring: keyring) == Data("old".utf8))
        #expect(try SealedObject.open(new, binding: Self.binding, keyring: keyring) == Data("new".utf8))
    }

    @Test func plainObjectsAreToldApart() {
        #expect(throws: SealError.notEncrypted(name: "wal/x")) {
            try SealedObject.open(
                Data("\u{04}\"M\u{18}lz4 frame".utf8), binding: .init(system: 1, name: "wal/x"), keyring: Self.keyring)
        }
    }

    @Test func streamingSealsTheSameFormat() throws {
        let plain = Self.plaintext(3 * 4096 + 1234)
        var sealer = try SealedObject.Sealer(binding: Self.binding, keyring: Self.keyring, chunkSize: Self.chunk)
        var sealed = sealer.header
        for piece in stride(from: 0, to: plain.count, by: 1000) {
            sealed += try sealer.update(plain.subdata(in: piece..<min(plain.count, piece + 1000)))
        }
        sealed += try sealer.finish()
        #expect(try SealedObject.open(sealed, binding: Self.binding, keyring: Self.keyring) == plain)
    }
}

@Suite struct KeyringTests {
    static func directory() throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("keyring-\(getpid())-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    @Test func createNeverOverwritesAndWritesMode0600() throws {
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/keyring.json"
        let keyring = Keyring.generate()
        try keyring.create(path: path)
        let mode = (try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? NSNumber)?.intValue
        #expect(mode == 0o600)
        #expect(try Keyring.load(path: path) == keyring)
        #expect(throws: KeyringError.self) { try Keyring.generate().create(path: path) }
        #expect(try Keyring.load(path: path) == keyring, "the first keyring is untouched")
    }

    @Test func rotationKeepsTheOldKeysOnDisk() throws {
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/keyring.json"
        var keyring = Keyring.generate()
        try keyring.create(path: path)
        let first = keyring.currentID
        let added = keyring.rotate()
        try keyring.replace(path: path)
        let loaded = try Keyring.load(path: path)
        #expect(loaded.currentID == added.id)
        #expect(loaded.key(id: first) != nil)
        let mode = (try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? NSNumber)?.intValue
        #expect(mode == 0o600)
    }

    @Test func badKeyringsAreRefusedClearly() throws {
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/keyring.json"
        FileManager.default.createFile(
            atPath: path, contents: Keyring.generate().encoded(), attributes: [.posixPermissions: 0o644])
        #expect { try Keyring.load(path: path) } throws: { "\($0)".contains("accessible to every user") }
        #expect { try Keyring.decode(Data("{}".utf8), origin: "k.json") } throws: {
            "\($0)".contains("k.json is not a walship keyring")
        }
        #expect { try Keyring.load(path: directory + "/missing") } throws: { "\($0)".contains("cannot read the keyring") }
    }
}

/// The piecewise opener a large restore uses gives what `open` gives, and refuses what it refuses.
@Suite struct SealedObjectOpenerTests {
    static func openPiecewise(_ sealed: Data) throws -> Data {
        var opener = try SealedObject.Opener(
            start: sealed.prefix(SealedObject.Opener.headerProbeBytes), objectSize: sealed.count,
            binding: SealedObjectTests.binding, keyring: SealedObjectTests.keyring)
        var offset = opener.headerSize
        var out = Data()
        while !opener.finished {
            let length = opener.nextChunkLength
            out += try opener.open(Data(sealed[offset..<offset + length]))
            offset += length
        }
        #expect(offset == sealed.count)
        return out
    }

    @Test(arguments: [0, 1, 4095, 4096, 4097, 3 * 4096, 3 * 4096 + 5])
    func opensWhatOpenOpens(size: Int) throws {
        let plain = SealedObjectTests.plaintext(size)
        #expect(try Self.openPiecewise(try SealedObjectTests.seal(plain)) == plain)
    }

    @Test func aFlippedByteOrACutAtAChunkBoundaryIsRefused() throws {
        let sealed = try SealedObjectTests.seal(SealedObjectTests.plaintext(5 * 4096 + 100))
        let header = SealedObject.headerSize(keyID: SealedObjectTests.keyring.currentID)
        var flipped = sealed
        flipped[header + 2 * (4096 + 16) + 7] ^= 1
        #expect(throws: SealError.tampered(name: SealedObjectTests.binding.name, chunk: 2)) {
            try Self.openPiecewise(flipped)
        }
        for chunks in 1...5 {
            let cut = sealed.prefix(header + chunks * (4096 + 16))
            #expect(throws: SealError.truncated(name: SealedObjectTests.binding.name)) { try Self.openPiecewise(Data(cut)) }
        }
        let other = Keyring.generate()
        #expect(throws: SealError.self) {
            _ = try SealedObject.Opener(
                start: sealed.prefix(SealedObject.Opener.headerProbeBytes), objectSize: sealed.count,
                binding: SealedObjectTests.binding, keyring: other)
        }
    }
}
