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
            throw ParseError(
                description:
                    "invalid connection string: \(reason.trimmingNewlines()) (hint: use key=value pairs such as \"host=db1 port=5432 user=walship\", or a postgresql:// URI)"
            )
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

    /// Whether one of this conninfo's hosts is `host`:`port` (a server listening on `host`). A wildcard
    /// listener (0.0.0.0, ::) matches any host; loopback names match each other; `localNames` are this
    /// machine's names.
    ///
    /// `loopbackIsLocal` false judges the conninfo of a client on another host: its loopback is its own, so a
    /// loopback name never leads here, and only `host` itself or one of `localNames` does (a wildcard listener
    /// included).
    public func reaches(host: String, port: Int, localNames: [String] = [], loopbackIsLocal: Bool = true) -> Bool {
        let ports = (self["port"] ?? "5432").split(separator: ",").map(String.init)
        let hosts = (self["host"] ?? self["hostaddr"] ?? "localhost").split(separator: ",").map(String.init)
        let loopback: Set<String> = ["127.0.0.1", "localhost", "::1"]
        for (index, candidate) in hosts.enumerated() {
            // libpq pairs hosts and ports by position; a single port applies to every host.
            let candidatePort = ports.count == hosts.count ? ports[index] : ports[0]
            guard candidatePort == String(port) else { continue }
            if !loopbackIsLocal {
                let name = candidate.lowercased()
                if isLoopbackHost(name) { continue }
                if name == host.lowercased() || localNames.contains(where: { $0.lowercased() == name }) { return true }
                continue
            }
            if candidate == host || host == "0.0.0.0" || host == "::" || localNames.contains(candidate)
                || (loopback.contains(host) && loopback.contains(candidate))
            {
                return true
            }
        }
        return false
    }
}

/// Whether `host` (a name or an address, as a conninfo or a server gives it) is a loopback host: `localhost`,
/// 127.0.0.0/8, `::1`, or an IPv4-mapped loopback address. A Unix-domain socket directory is not a host.
public func isLoopbackHost(_ host: String) -> Bool {
    let name = host.lowercased()
    if name == "localhost" || name.hasSuffix(".localhost") || name == "::1" { return true }
    let v4 = name.hasPrefix("::ffff:") ? String(name.dropFirst(7)) : name
    let octets = v4.split(separator: ".", omittingEmptySubsequences: false)
    return octets.count == 4 && octets[0] == "127" && octets.allSatisfy { UInt8($0) != nil }
}

extension String {
    func trimmingNewlines() -> String {
        var s = Substring(self)
        while let last = s.last, last.isNewline || last == " " { s = s.dropLast() }
        return String(s)
    }
}
