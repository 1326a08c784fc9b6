"""The networks: the generator (travel.nets.generator), its blocks, and the discriminator families
(travel.nets.discriminators). Translation needs the generator alone and never imports a discriminator."""
