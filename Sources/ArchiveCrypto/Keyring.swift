import Crypto
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The archive's key-encryption keys (KEKs): a JSON file, mode 0600, that `walship keys init` creates and
/// `walship keys rotate` extends. Each object in the archive has its own data key, wrapped by the keyring's current
/// KEK, whose id the object's header names; rotation adds a KEK for new objects while the old ones still open.
public struct Keyring: Sendable, Equatable {
    public struct Key: Sendable, Equatable {
        public var id: String
        public var createdAt: Date
        public var material: SymmetricKey

        public static func == (a: Key, b: Key) -> Bool {
            a.id == b.id && a.createdAt == b.createdAt
                && a.material.withUnsafeBytes { x in b.material.withUnsafeBytes { y in x.elementsEqual(y) } }
        }
    }

    public private(set) var keys: [Key]
    /// The id of the key new objects are encrypted with.
    public private(set) var currentID: String

    public init(keys: [Key], currentID: String) throws(KeyringError) {
        guard !keys.isEmpty else { throw KeyringError("a keyring needs at least one key") }
        guard keys.contains(where: { $0.id == currentID }) else {
            throw KeyringError("the keyring's current key \(currentID) is not among its keys")
        }
        guard Set(keys.map(\.id)).count == keys.count else { throw KeyringError("the keyring names a key id twice") }
        for key in keys {
            guard Self.isValidID(key.id) else { throw KeyringError("the keyring holds an invalid key id '\(key.id)'") }
            guard key.material.bitCount == 256 else {
                throw KeyringError("key \(key.id) is not a 256-bit key (AES-256 needs 32 bytes)")
            }
        }
        self.keys = keys
        self.currentID = currentID
    }

    /// A keyring with one new random key.
    public static func generate(now: Date = Date()) -> Keyring {
        let key = newKey(now: now, existing: [])
        return try! Keyring(keys: [key], currentID: key.id)
    }

    /// Adds a new random key and makes it the current one; the old keys stay, for the objects they wrapped.
    public mutating func rotate(now: Date = Date()) -> Key {
        let key = Self.newKey(now: now, existing: Set(keys.map(\.id)))
        keys.append(key)
        currentID = key.id
        return key
    }

    public var current: Key { keys.first { $0.id == currentID }! }

    public func key(id: String) -> Key? { keys.first { $0.id == id } }

    /// `kYYYYMMDD-` and 8 random hex digits: sortable by creation, and two keyrings made the same day still differ.
    static func newKey(now: Date, existing: Set<String>) -> Key {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        let c = calendar.dateComponents([.year, .month, .day], from: now)
        let day = String(format: "%04d%02d%02d", c.year ?? 1970, c.month ?? 1, c.day ?? 1)
        while true {
            let suffix = (0..<4).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
            let id = "k\(day)-\(suffix)"
            if !existing.contains(id) {
                return Key(
                    id: id, createdAt: Date(timeIntervalSince1970: now.timeIntervalSince1970.rounded(.down)),
                    material: SymmetricKey(size: .bits256))
            }
        }
    }

    /// Letters, digits, `-`, `_` and `.`, at most 64: it is stored in every object's header.
    static func isValidID(_ id: String) -> Bool {
        !id.isEmpty && id.utf8.count <= 64
            && id.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == ".") }
    }

    // MARK: The file

    struct File: Codable {
        struct Entry: Codable {
            var id: String
            var createdAt: String
            var key: String
        }
        var format: String
        var version: Int
        var current: String
        var keys: [Entry]
    }

    static let formatName = "walship-archive-keyring"

    public func encoded() -> Data {
        let file = File(
            format: Self.formatName, version: 1, current: currentID,
            keys: keys.map { key in
                File.Entry(
                    id: key.id, createdAt: key.createdAt.formatted(Date.ISO8601FormatStyle()),
                    key: key.material.withUnsafeBytes { Data($0).base64EncodedString() })
            })
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return (try? encoder.encode(file)).map { $0 + Data("\n".utf8) } ?? Data()
    }

    public static func decode(_ data: Data, origin: String) throws(KeyringError) -> Keyring {
        let file: File
        do {
            file = try JSONDecoder().decode(File.self, from: data)
        } catch {
            throw KeyringError("\(origin) is not a walship keyring (\(error))", hint: "make one with walship keys init FILE")
        }
        guard file.format == formatName, file.version == 1 else {
            throw KeyringError("\(origin) is not a version 1 walship keyring", hint: "make one with walship keys init FILE")
        }
        var keys: [Key] = []
        for entry in file.keys {
            guard let material = Data(base64Encoded: entry.key), material.count == 32 else {
                throw KeyringError(
                    "key \(entry.id) in \(origin) is not 32 bytes of base64", hint: "restore the file from its escrow copy")
            }
            let created = (try? Date.ISO8601FormatStyle().parse(entry.createdAt)) ?? Date(timeIntervalSince1970: 0)
            keys.append(Key(id: entry.id, createdAt: created, material: SymmetricKey(data: material)))
        }
        do {
            return try Keyring(keys: keys, currentID: file.current)
        } catch {
            throw KeyringError("\(origin): \(error.problem)", hint: "restore the file from its escrow copy")
        }
    }

    /// Reads a keyring file; refuses one that others may read (the keys decrypt the whole archive).
    public static func load(path: String) throws(KeyringError) -> Keyring {
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw KeyringError(
                "cannot read the keyring \(path): \(String(cString: strerror(errno)))",
                hint: "give the file walship keys init made, readable by this user")
        }
        guard info.st_mode & 0o007 == 0 else {
            throw KeyringError(
                "the keyring \(path) is accessible to every user (mode \(String(info.st_mode & 0o777, radix: 8)))",
                hint: "chmod 600 \(path); it decrypts the whole archive")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw KeyringError("cannot read the keyring \(path)", hint: "check that this user may read it")
        }
        return try decode(data, origin: path)
    }

    /// Writes a new keyring file, mode 0600, refusing to overwrite one: the old keys would be lost, and with them
    /// every object they encrypted.
    public func create(path: String) throws(KeyringError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            let reason = errno == EEXIST ? "it exists" : String(cString: strerror(errno))
            throw KeyringError(
                "cannot create the keyring \(path): \(reason)",
                hint: errno == EEXIST
                    ? "walship never overwrites a keyring (its keys may still open archived objects); add a key with walship keys rotate \(path)"
                    : "check the directory exists and this user may write there")
        }
        defer { close(fd) }
        try Self.write(encoded(), to: fd, path: path)
    }

    /// Replaces the keyring file atomically (a temporary file beside it, fsynced, renamed over it), mode 0600.
    public func replace(path: String) throws(KeyringError) {
        let temporary = path + ".tmp-\(getpid())"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw KeyringError("cannot write \(temporary): \(String(cString: strerror(errno)))", hint: "check the directory")
        }
        do {
            try Self.write(encoded(), to: fd, path: temporary)
        } catch {
            close(fd)
            unlink(temporary)
            throw error
        }
        close(fd)
        guard rename(temporary, path) == 0 else {
            unlink(temporary)
            throw KeyringError("cannot replace \(path): \(String(cString: strerror(errno)))", hint: "check the directory")
        }
    }

    private static func write(_ data: Data, to fd: Int32, path: String) throws(KeyringError) {
        let written = data.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        guard written == data.count, fsync(fd) == 0 else {
            throw KeyringError("cannot write \(path): \(String(cString: strerror(errno)))", hint: "check the disk")
        }
    }
}

public struct KeyringError: Error, Equatable, CustomStringConvertible {
    public var problem: String
    public var hint: String?
    public init(_ problem: String, hint: String? = nil) {
        self.problem = problem
        self.hint = hint
    }
    public var description: String { problem + (hint.map { " (hint: \($0))" } ?? "") }
}
