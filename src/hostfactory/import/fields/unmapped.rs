//! The source fields hostforge does not map, each with the reason, and the
//! note for every field left over once all groups were read.

use super::cursor::Cursor;

/// Fields known from IBM's and open-hostfactory-plugin's templates that have
/// no hostforge equivalent, with what a user should know about each.
const UNMAPPED: &[(&str, &str)] = &[
    ("attributes", "not needed: the operator reads the size of the first instance type from the cloud (status.instanceTypeInfo)"),
    ("fleetRole", "not needed: EC2 Fleet instant fleets use the service-linked role"),
    ("fleetType", "not needed: fleets are always of type instant"),
    ("userData", "not mapped: these variables fed IBM's own user_data.sh; put them into the user data script"),
];

/// Notes the known unmapped fields (in table order), then every field no
/// group consumed (in key order), so nothing is dropped silently.
pub(super) fn note_the_rest(c: &mut Cursor) {
    for (field, message) in UNMAPPED {
        if c.take(field).is_some() {
            c.note(field, *message);
        }
    }
    let rest: Vec<String> = c.rest.keys().cloned().collect();
    for field in rest {
        c.note(&field, "no hostforge equivalent; not mapped");
    }
}
