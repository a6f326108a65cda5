import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Plain socket probes for the checks: nothing here holds a socket past its call.
enum NetworkProbe {
    static func addresses(host: String, port: Int, passive: Bool) -> [addrinfo] {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = passive ? AI_PASSIVE : 0
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &list) == 0 else { return [] }
        defer { freeaddrinfo(list) }
        var result: [addrinfo] = []
        var cursor = list
        while let entry = cursor {
            var copy = entry.pointee
            // The address is copied out: freeaddrinfo releases the list.
            let address = UnsafeMutablePointer<sockaddr>.allocate(
                capacity: Int(copy.ai_addrlen) / MemoryLayout<sockaddr>.size + 1)
            memcpy(address, copy.ai_addr, Int(copy.ai_addrlen))
            copy.ai_addr = address
            copy.ai_next = nil
            result.append(copy)
            cursor = entry.pointee.ai_next
        }
        return result
    }

    /// nil when `host:port` can be bound (and is released at once), else the errno.
    static func bind(host: String, port: Int) -> Int32? {
        guard let address = addresses(host: host, port: port, passive: true).first else { return EADDRNOTAVAIL }
        defer { address.ai_addr.deallocate() }
        let fd = socket(address.ai_family, address.ai_socktype, 0)
        guard fd >= 0 else { return errno }
        defer { close(fd) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        return Glibc.bind(fd, address.ai_addr, address.ai_addrlen) == 0 ? nil : errno
    }

    /// nil when a TCP connection to `host:port` opens (and is closed at once), else why not.
    static func connect(host: String, port: Int, timeout: Int) -> String? {
        let candidates = addresses(host: host, port: port, passive: false)
        defer { candidates.forEach { $0.ai_addr.deallocate() } }
        guard !candidates.isEmpty else { return "cannot resolve \(host)" }
        var last = "no address"
        for address in candidates {
            let fd = socket(address.ai_family, address.ai_socktype, 0)
            guard fd >= 0 else { continue }
            var limit = timeval(tv_sec: timeout, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
            let rc = Glibc.connect(fd, address.ai_addr, address.ai_addrlen)
            last = String(cString: strerror(errno))
            close(fd)
            if rc == 0 { return nil }
        }
        return last
    }
}
