import CLibPQ

/// A libpq connection string, parsed by libpq itself so every form it accepts works (key=value, URI,
/// multi-host lists); the PG* environment variables fill in what it leaves out, as libpq always does.
public struct Conninfo: Sendable, CustomStringConvertible {
    public private(set) var options: [(key: String, value: String)]

    public struct ParseError: Error, CustomStringConvertible {
        public let description: String
    }

    public init(_ text: String) throws {
        var errorMessage: UnsafeMutablePointer<CChar>?
        guard let parsed = PQconninfoParse(text, &errorMessage) else {
            let reason = errorMessage.map { String(cString: $0) } ?? "out of memory"
            if let errorMessage { PQfreemem(errorMessage) }
            throw ParseError(description: "invalid connection string: \(reason.trimmingNewlines()) (hint: use key=value pairs such as \"host=db1 port=5432 user=walship\", or a postgresql:// URI)")
        }
        defer { PQconninfoFree(parsed) }
        var options: [(String, String)] = []
        var option = parsed
        while let keyword = option.pointee.keyword {
            if let value = option.pointee.val { options.append((String(cString: keyword), String(cString: value))) }
            option += 1
        }
        self.options = options
    }

    public subscript(key: String) -> String? {
        get { options.last(where: { $0.key == key })?.value }
        set {
            options.removeAll { $0.key == key }
            if let newValue { options.append((key, newValue)) }
        }
    }

    /// The connection string with secrets removed, fit for logs, errors and status pages.
    public var description: String {
        options.filter { !Self.secretKeys.contains($0.key) }
            .map { "\($0.key)=\($0.value)" }.joined(separator: " ")
    }

    static let secretKeys: Set<String> = ["password", "sslpassword", "sslkey"]
}

extension String {
    func trimmingNewlines() -> String {
        var s = Substring(self)
        while let last = s.last, last.isNewline || last == " " { s = s.dropLast() }
        return String(s)
    }
}
