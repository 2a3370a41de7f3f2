//! A Python consumer keeps its position in `user.consumer.<GROUP>` and resumes where it
//! stopped after `kill -9` of the daemon (issue 11's list: positions from Python across
//! `kill -9`): `os.setxattr` is durable when it returns.

mod common;

use common::{mount, Config};

/// Reads 4 messages of `t/0` from the group's position (0 when it has none) and stores the
/// next position; prints what it read.
const CONSUMER: &str = r#"
import errno, os
d, name = "t/0", "user.consumer.py"
try:
    position = int(os.getxattr(d, name))
except OSError as e:
    assert e.errno == errno.ENODATA, e
    position = 0
with open(d + "/stream") as stream:
    lines = stream.read().splitlines()[position:position + 4]
print(" ".join(lines))
os.setxattr(d, name, str(position + len(lines)).encode())
"#;

#[test]
fn a_python_consumer_resumes_where_it_stopped_across_kill_9() {
    let Some(mut m) = mount(Config::small()) else {
        return;
    };
    m.sh_ok("mkdir t && seq -f 'm%g' 0 9 >> t/0/active");
    let consume = format!("timeout 20 python3 -c '{CONSUMER}'");
    assert_eq!(m.sh_ok(&consume), "m0 m1 m2 m3\n");
    m.kill9();
    m.start();
    assert_eq!(m.sh_ok(&consume), "m4 m5 m6 m7\n");
    m.kill9();
    m.start();
    assert_eq!(m.sh_ok(&consume), "m8 m9\n");
    assert_eq!(common::xattr_u64(&m.path("t/0"), "user.consumer.py"), 10);
}
