import Foundation
import PGReplication

#if canImport(Glibc)
import Glibc
#endif

/// This host's names and the addresses of its interfaces: what a conninfo must name to lead here.
struct ThisHost: Sendable, Equatable {
    /// Host names, lower-cased: the kernel's and the one Foundation reports.
    var names: Set<String>
    /// Numeric addresses of every interface, loopback included.
    var addresses: Set<String>

    static func current() -> ThisHost {
        var names: Set<String> = [ProcessInfo.processInfo.hostName.lowercased()]
        var buffer = [CChar](repeating: 0, count: 256)
        if gethostname(&buffer, buffer.count) == 0 { names.insert(text(buffer).lowercased()) }
        var addresses: Set<String> = []
        var list: UnsafeMutablePointer<ifaddrs>?
        if getifaddrs(&list) == 0 {
            defer { freeifaddrs(list) }
            var cursor = list
            while let entry = cursor {
                if let address = entry.pointee.ifa_addr, let text = numericAddress(address) { addresses.insert(text) }
                cursor = entry.pointee.ifa_next
            }
        }
        return ThisHost(names: names.subtracting([""]), addresses: addresses)
    }

    /// Whether a server that accepted a connection on `serverAddress` (`inet_server_addr()`: nil over a Unix-domain
    /// socket) runs on this host.
    func runs(serverAddress: String?) -> Bool {
        guard let serverAddress else { return true }
        let address = serverAddress.lowercased()
        return isLoopbackHost(address) || addresses.contains(address)
            || (address.hasPrefix("::ffff:") && addresses.contains(String(address.dropFirst(7))))
    }

    /// The names and addresses by which a client elsewhere may reach this host: its names, its interfaces'
    /// addresses other than loopback, and those of `candidates` (host names from a conninfo) that resolve to one.
    func namesSeenFromElsewhere(resolving candidates: [String], resolve: (String) -> [String] = resolveHost) -> [String] {
        let outward = addresses.filter { !isLoopbackHost($0) }
        let resolved = candidates.filter { candidate in
            !isLoopbackHost(candidate) && !candidate.hasPrefix("/")
                && resolve(candidate).contains { outward.contains($0.lowercased()) }
        }
        return (names.sorted() + outward.sorted() + resolved).filter { !isLoopbackHost($0) }
    }
}

/// The hosts a conninfo names (`host`, else `hostaddr`), one per entry of a multi-host list.
func conninfoHosts(_ text: String) -> [String] {
    guard let conninfo = try? Conninfo(text), let hosts = conninfo["host"] ?? conninfo["hostaddr"] else { return [] }
    return hosts.split(separator: ",").map(String.init)
}

/// The numeric addresses `host` resolves to (empty when it does not resolve).
func resolveHost(_ host: String) -> [String] {
    var hints = addrinfo()
    hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
    var list: UnsafeMutablePointer<addrinfo>?
    guard getaddrinfo(host, nil, &hints, &list) == 0 else { return [] }
    defer { freeaddrinfo(list) }
    var result: [String] = []
    var cursor = list
    while let entry = cursor {
        if let address = entry.pointee.ai_addr, let text = numericAddress(address) { result.append(text) }
        cursor = entry.pointee.ai_next
    }
    return result
}

/// An IPv4 or IPv6 socket address as text (IPv6 without its zone), or nil for another family.
private func numericAddress(_ address: UnsafeMutablePointer<sockaddr>) -> String? {
    let family = Int32(address.pointee.sa_family)
    guard family == AF_INET || family == AF_INET6 else { return nil }
    let length = socklen_t(family == AF_INET ? MemoryLayout<sockaddr_in>.size : MemoryLayout<sockaddr_in6>.size)
    var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
    guard getnameinfo(address, length, &host, socklen_t(host.count), nil, 0, NI_NUMERICHOST) == 0 else { return nil }
    return text(host).lowercased().split(separator: "%").first.map(String.init)
}

/// A NUL-terminated C string in `buffer`.
private func text(_ buffer: [CChar]) -> String {
    String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
