"""The feature cache: HDF5 store (`hdf5`), WebDataset shards (`shards`), and the sample dict both readers yield."""
