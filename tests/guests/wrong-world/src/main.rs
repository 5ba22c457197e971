fn main() {
    println!("a component of another world");
}
